"""VoCo (Wu et al., CVPR 2024): volume contrast by predicting where a random crop lies.

A volume is tiled by `grid`^3 non-overlapping base crops; random crops of the base-crop shape
are placed anywhere inside it. A random crop's target is its volume overlap fraction with each
base crop (the row sums to 1, since the base crops tile the volume). The prediction is
l_k = ReLU(cos(q, k_k)) between the random crop's projected embedding q and each base crop's
k_k. The loss is the paper's:

  L_pre = -1/K sum_k log(1 - |y_k - l_k|)          (eq. 3, over the K base crops)
  L_reg = 2 / (K (K - 1)) sum_{i<j} |cos(k_i, k_j)|   (eq. 5: base crops pushed apart)
  L = L_pre + reg_weight L_reg                       (eq. 7; VoCo's weight is 1)

The ReLU is from VoCo's code (cosines below 0 would make |y - l| exceed 1 and the log
undefined), as is the 1e-6 inside the log. VoCo's later code replaces both terms (an overlap-
weighted log term plus squared logits where the target is 0, ReLU(cos)^2 for L_reg) and adds
an EMA teacher; we keep the paper's equations without a teacher. In L_pre the base-crop
embeddings are held fixed (stop-gradient): they act as the class assignments that the random
crops are predicted against, and they are shaped by L_reg (VoCo's code pairs each prediction
with one no-gradient side too, the teacher's).

Crops are integer-voxel boxes (no interpolation), so the targets are exact.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from osteojax.errors import ConfigError
from osteojax.models.heads import l2_normalize

LOG_EPS = 1e-6      # inside log(1 - d + eps), as VoCo


def crop_shape(volume_shape, grid: int) -> tuple:
  """The base-crop (and random-crop) shape: each edge of the volume divided by grid."""
  if not isinstance(grid, int) or grid < 2:
    raise ConfigError(f'config.voco.grid must be an integer >= 2 (base crops per axis), '
                      f'got {grid!r}')
  if any(s % grid for s in volume_shape):
    raise ConfigError(f'config.voco.grid {grid} does not divide the ROI shape '
                      f'{tuple(volume_shape)}: base crops must tile it')
  return tuple(int(s) // grid for s in volume_shape)


def base_crops(vol, grid: int):
  """The grid^3 base crops of vol [D, H, W] -> [grid^3, d, h, w], in raster order (z, y, x)."""
  d, h, w = crop_shape(vol.shape, grid)
  x = vol.reshape(grid, d, grid, h, grid, w).transpose(0, 2, 4, 1, 3, 5)
  return x.reshape(grid ** 3, d, h, w)


def random_starts(key, n: int, volume_shape, crop):
  """[n, 3] integer corners of n random crops of shape crop, uniform over every position that
  keeps the crop inside the volume (the border included)."""
  hi = jnp.array([s - c + 1 for s, c in zip(volume_shape, crop)])
  return jax.random.randint(key, (n, 3), 0, hi)


def random_crops(vol, starts, crop):
  """The crops of vol [D, H, W] at starts [n, 3] -> [n, *crop]."""
  return jax.vmap(lambda s: lax.dynamic_slice(vol, s, crop))(starts)


def overlap_targets(starts, crop, grid: int):
  """[n, grid^3]: the fraction of each random crop (corner starts [n, 3], shape crop) lying in
  each base crop (raster order, as base_crops). The overlap of two boxes is the product of the
  per-axis overlaps."""
  per_axis = []
  for a in range(3):
    c = crop[a]
    lo = jnp.arange(grid) * c                                         # base crops' starts
    s = starts[:, a:a + 1]
    inter = jnp.minimum(s + c, lo + c) - jnp.maximum(s, lo)           # [n, grid]
    per_axis.append(jnp.maximum(inter, 0) / c)
  z, y, x = per_axis
  return (z[:, :, None, None] * y[:, None, :, None] * x[:, None, None, :]).reshape(
      starts.shape[0], grid ** 3)


def prediction_logits(z_random, z_base):
  """l = ReLU(cos(q, k)): [b, R, F], [b, K, F] -> [b, R, K]; no gradient to the base crops."""
  q = l2_normalize(z_random)
  k = l2_normalize(lax.stop_gradient(z_base))
  return jax.nn.relu(jnp.einsum('brf,bkf->brk', q, k))


def prediction_loss(logits, targets):
  """L_pre: the mean over examples, random crops and base crops of -log(1 - |y - l|)."""
  return -jnp.mean(jnp.log(1 - jnp.abs(targets - logits) + LOG_EPS))


def regularization_loss(z_base):
  """L_reg: the mean |cos| over the K (K - 1) / 2 pairs of distinct base crops, averaged over
  examples. z_base: [b, K, F]."""
  k = l2_normalize(z_base)
  sim = jnp.einsum('bif,bjf->bij', k, k)
  n = z_base.shape[1]
  pairs = jnp.triu(jnp.ones((n, n)), 1)
  return jnp.mean(jnp.sum(jnp.abs(sim) * pairs, axis=(1, 2)) / jnp.sum(pairs))


def voco_loss(z_base, z_random, targets, reg_weight: float):
  """(L_pre + reg_weight L_reg, metrics) for embeddings z_base [b, K, F], z_random [b, R, F]
  and overlap targets [b, R, K]. Every example has the same crops, so the mean over a device's
  shard, averaged over devices, is the global mean."""
  logits = prediction_logits(z_random, z_base)
  pre = prediction_loss(logits, targets)
  reg = regularization_loss(z_base)
  return pre + reg_weight * reg, dict(
      prediction_loss=pre, regularization_loss=reg,
      abs_error=jnp.mean(jnp.abs(targets - logits)),
      # how often the most similar base crop is the one holding most of the random crop
      top1=jnp.mean(jnp.argmax(logits, -1) == jnp.argmax(targets, -1)))
