"""3-D ResNet encoders (basic blocks) in Flax: ResNet34-3D and a slim variant for CPU runs.

Normalisation is BatchNorm synchronised over the pmap axis (`axis_name`), so statistics are
those of the global batch and 1 device and N devices compute the same thing. Outside pmap
(evaluation, probes) pass `train=False`: running averages are used and no axis is needed.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp


class BasicBlock3D(nn.Module):
  """Two 3x3x3 convolutions with a residual connection. x: [B, D, H, W, C]."""
  features: int
  strides: int = 1
  axis_name: str | None = None
  zero_init_residual: bool = False

  @nn.compact
  def __call__(self, x, train: bool):
    norm = lambda name, **kw: nn.BatchNorm(use_running_average=not train, momentum=0.9,
                                           axis_name=self.axis_name if train else None,
                                           name=name, **kw)
    s = (self.strides,) * 3
    y = nn.Conv(self.features, (3, 3, 3), s, use_bias=False, name='conv1')(x)
    y = nn.relu(norm('bn1')(y))
    y = nn.Conv(self.features, (3, 3, 3), use_bias=False, name='conv2')(y)
    # zero_init_residual (Goyal et al. 2017): the branch starts as zero, each block as identity.
    y = norm('bn2', scale_init=(nn.initializers.zeros if self.zero_init_residual
                                else nn.initializers.ones))(y)
    if x.shape[-1] != self.features or self.strides != 1:
      # ResNet-D shortcut: average-pool, then 1^3 conv. A strided 1^3 conv would see only
      # every other voxel (on a 2^3 map just the corner, which is background for every ROI).
      if self.strides != 1:
        x = nn.avg_pool(x, s, s, padding='SAME')
      x = nn.Conv(self.features, (1, 1, 1), use_bias=False, name='proj')(x)
      x = norm('bn_proj')(x)
    return nn.relu(x + y)


class ResNet3D(nn.Module):
  """ResNet encoder: [B, D, H, W, C] -> pooled features [B, widths[-1]].

  stage_sizes (3, 4, 6, 3) with widths (64, 128, 256, 512) is ResNet34-3D (63M parameters);
  the slim CPU variant keeps the depth with widths (16, 32, 64, 128).
  """
  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  widths: Sequence[int] = (64, 128, 256, 512)
  stem_stride: int = 2
  stem_pool: bool = True
  axis_name: str | None = 'batch'
  zero_init_residual: bool = False

  @nn.compact
  def __call__(self, x, train: bool = True):
    # Stem as in ResNet: strided 7^3 convolution and a 3^3/2 max-pool (4x down-sampling).
    x = nn.Conv(self.widths[0], (7, 7, 7), (self.stem_stride,) * 3, use_bias=False,
                name='stem')(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                     axis_name=self.axis_name if train else None, name='stem_bn')(x)
    x = nn.relu(x)
    if self.stem_pool:
      x = nn.max_pool(x, (3, 3, 3), (2, 2, 2), padding='SAME')
    for i, (n, w) in enumerate(zip(self.stage_sizes, self.widths)):
      for j in range(n):
        x = BasicBlock3D(w, 2 if (j == 0 and i > 0) else 1, self.axis_name,
                         self.zero_init_residual, name=f'stage{i + 1}_block{j + 1}')(x, train)
    return jnp.mean(x, axis=(1, 2, 3))


def encoder_from_config(c) -> ResNet3D:
  """The encoder named by config.model (name, stage_sizes, widths, stem_stride, stem_pool,
  zero_init_residual: True in configs saved before it was a setting)."""
  if c.name != 'resnet3d':
    raise ValueError(f'unknown model {c.name!r} (known: resnet3d)')
  return ResNet3D(tuple(c.stage_sizes), tuple(c.widths), c.stem_stride, c.stem_pool,
                  zero_init_residual=c.get('zero_init_residual', True))
