"""2-D U-Net (Ronneberger et al. 2015) in Flax: the MRI segmenter of annotation transfer.

Encoder: per level two 3x3 conv + BatchNorm + ReLU, then 2x2 max-pool; decoder: 2x2
transposed conv up, concatenation with the encoder's skip, two 3x3 conv + BN + ReLU; a 1x1
conv gives per-class logits. Widths come from the config (one per level, the last is the
bottleneck). Inputs whose sides are not multiples of 2^(levels - 1) are zero-padded and the
logits cropped back. BatchNorm is synchronised over the pmap axis when training.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp


class ConvBlock(nn.Module):
  """Two 3x3 convolutions, each with BatchNorm and ReLU. x: [B, H, W, C]."""
  features: int
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool):
    for i in range(2):
      x = nn.Conv(self.features, (3, 3), use_bias=False, name=f'conv{i}')(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                       axis_name=self.axis_name if train else None, name=f'bn{i}')(x)
      x = nn.relu(x)
    return x


class UNet(nn.Module):
  """[B, H, W, C] -> logits [B, H, W, num_classes]."""
  widths: Sequence[int] = (16, 32, 64, 128)
  num_classes: int = 4
  axis_name: str | None = 'batch'

  @nn.compact
  def __call__(self, x, train: bool = True):
    levels = len(self.widths)
    h, w = x.shape[1:3]
    m = 2 ** (levels - 1)
    ph, pw = -h % m, -w % m
    x = jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)))
    skips = []
    for i, f in enumerate(self.widths[:-1]):
      x = ConvBlock(f, self.axis_name, name=f'down{i}')(x, train)
      skips.append(x)
      x = nn.max_pool(x, (2, 2), (2, 2))
    x = ConvBlock(self.widths[-1], self.axis_name, name='bottleneck')(x, train)
    for i in reversed(range(levels - 1)):
      f = self.widths[i]
      x = nn.ConvTranspose(f, (2, 2), (2, 2), name=f'up{i}')(x)
      x = jnp.concatenate([skips[i], x], -1)
      x = ConvBlock(f, self.axis_name, name=f'dec{i}')(x, train)
    logits = nn.Conv(self.num_classes, (1, 1), name='logits')(x)
    return logits[:, :h, :w]


def unet_from_config(c) -> UNet:
  """The U-Net of config.model (widths, num_classes)."""
  if len(c.widths) < 1:
    raise ValueError('the U-Net needs at least one width')
  return UNet(tuple(c.widths), int(c.num_classes))
