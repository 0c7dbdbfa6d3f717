"""Spatial encoders of the DXA-MRI aligner and the pooled-embedding baseline.

SpatialEncoder (the paper's Fig. 6, after the authors' VGG-style encoder): stages of two
3x3 conv + BatchNorm + ReLU, 2x2 max-pooling after each of the first `pools` stages (the paper:
three stages, three poolings, 8x down-sampling at 2.2 mm), then a final 3x3 conv + BN + ReLU and
a linear 3x3 conv to `embed_dim` (128), L2-normalised at every location. `pools` scales the
encoder with the pixel spacing: one cell is 2**pools pixels (`stride`) and the receptive field
is `receptive_field(len(widths), pools)` pixels; the paper's encoder has 68 px (150 mm at
2.2 mm) and 17.6 mm cells. Input channels are whatever the config selects (bone / tissue, fat / water).

PooledEncoder (the paper's baseline): the same trunk, global max pooling over locations, then a
projection head (Dense + BN + ReLU, Dense), L2-normalised: one vector per scan, returned as a
1 x 1 map so that the same correlation / loss code applies (a 1 x 1 correlation is the dot
product).

BatchNorm is synchronised over the pmap axis in training (`axis_name`), so the statistics are
those of the global batch and 1 vs N devices agree.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from osteojax.errors import ConfigError
from osteojax.models.heads import l2_normalize


class ConvBNReLU(nn.Module):
  features: int
  axis_name: str | None = 'batch'

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Conv(self.features, (3, 3), padding='SAME', use_bias=False)(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                     axis_name=self.axis_name if train else None)(x)
    return nn.relu(x)


def receptive_field(stages: int, pools: int) -> int:
  """Receptive field in input pixels of a map cell: `stages` stages of two 3x3 convs, a 2x2
  max-pool after each of the first `pools`, the last 3x3 conv and the 3x3 embedding conv."""
  rf, jump = 1, 1
  for i in range(stages):
    rf += 2 * 2 * jump
    if i < pools:
      rf += jump
      jump *= 2
  return rf + 2 * 2 * jump


class Trunk(nn.Module):
  """Stages of 2 x ConvBNReLU, 2x2 max-pooling after each of the first `pools` stages (None:
  every stage): [B, H, W, C] -> [B, H / 2**pools, W / 2**pools, last_width]."""
  widths: Sequence[int] = (64, 128, 256)
  last_width: int = 512
  axis_name: str | None = 'batch'
  pools: int | None = None

  @nn.compact
  def __call__(self, x, train: bool = True):
    pools = len(self.widths) if self.pools is None else self.pools
    for i, w in enumerate(self.widths):
      x = ConvBNReLU(w, self.axis_name, name=f'stage{i}_conv0')(x, train)
      x = ConvBNReLU(w, self.axis_name, name=f'stage{i}_conv1')(x, train)
      if i < pools:
        x = nn.max_pool(x, (2, 2), (2, 2))
    return ConvBNReLU(self.last_width, self.axis_name, name='last_conv')(x, train)


class SpatialEncoder(nn.Module):
  """[B, H, W, C] -> unit-norm feature map [B, H // s, W // s, embed_dim], s = 2**pools."""
  widths: Sequence[int] = (64, 128, 256)
  last_width: int = 512
  embed_dim: int = 128
  axis_name: str | None = 'batch'
  pools: int | None = None

  @nn.compact
  def __call__(self, x, train: bool = True):
    h = Trunk(self.widths, self.last_width, self.axis_name, self.pools, name='trunk')(x, train)
    return l2_normalize(nn.Conv(self.embed_dim, (3, 3), padding='SAME', name='embed')(h))


class PooledEncoder(nn.Module):
  """Baseline: [B, H, W, C] -> unit-norm global embedding as a map [B, 1, 1, embed_dim]."""
  widths: Sequence[int] = (64, 128, 256)
  last_width: int = 512
  embed_dim: int = 128
  axis_name: str | None = 'batch'
  pools: int | None = None

  @nn.compact
  def __call__(self, x, train: bool = True):
    h = Trunk(self.widths, self.last_width, self.axis_name, self.pools, name='trunk')(x, train)
    h = jnp.max(h, axis=(1, 2))
    h = nn.Dense(self.last_width, use_bias=False, name='proj_hidden')(h)
    h = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                     axis_name=self.axis_name if train else None, name='proj_bn')(h)
    z = l2_normalize(nn.Dense(self.embed_dim, name='proj_out')(nn.relu(h)))
    return z[:, None, None, :]


ENCODERS = {'spatial': SpatialEncoder, 'pooled': PooledEncoder}


class Aligner(nn.Module):
  """Two encoders: (dxa [B, H, W, Cd], mri [B, h, w, Cm]) -> (dxa map, mri map), unit norm."""
  encoder: str = 'spatial'
  widths: Sequence[int] = (64, 128, 256)
  last_width: int = 512
  embed_dim: int = 128
  axis_name: str | None = 'batch'
  pools: int | None = None

  def setup(self):
    if self.encoder not in ENCODERS:
      raise ConfigError(f'unknown encoder {self.encoder!r} ({", ".join(ENCODERS)})')
    cls = ENCODERS[self.encoder]
    self.dxa_encoder = cls(self.widths, self.last_width, self.embed_dim, self.axis_name,
                           self.pools)
    self.mri_encoder = cls(self.widths, self.last_width, self.embed_dim, self.axis_name,
                           self.pools)

  def __call__(self, dxa, mri, train: bool = True):
    return self.dxa_encoder(dxa, train), self.mri_encoder(mri, train)

  def embed_dxa(self, dxa, train: bool = False):
    return self.dxa_encoder(dxa, train)

  def embed_mri(self, mri, train: bool = False):
    return self.mri_encoder(mri, train)
