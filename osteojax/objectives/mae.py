"""Masked autoencoding (He et al. 2022, MAE) on volumes: random patch masking, the loss on the
normalised voxels of the masked patches only."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def num_kept(n_tokens: int, mask_ratio: float) -> int:
  """Visible patches per volume: int(n (1 - ratio)), as MAE, and at least one."""
  return max(int(n_tokens * (1 - mask_ratio)), 1)


def random_keep(key, n_tokens: int, mask_ratio: float):
  """(keep [n_keep] patch indices, mask [n] with 1 = masked) of one volume: a uniformly random
  subset of n_keep patches stays visible (MAE's per-sample shuffle)."""
  order = jnp.argsort(jax.random.uniform(key, (n_tokens,)))
  keep = order[:num_kept(n_tokens, mask_ratio)]
  mask = jnp.ones((n_tokens,), jnp.float32).at[keep].set(0.0)
  return keep, mask


def normalized_targets(patches, eps: float = 1e-6):
  """Each patch's voxels standardised by their own mean and variance (MAE's norm_pix_loss)."""
  mean = patches.mean(-1, keepdims=True)
  var = patches.var(-1, keepdims=True)
  return (patches - mean) / jnp.sqrt(var + eps)


def masked_mse(pred, target, mask):
  """Mean squared error per patch, averaged over the masked patches only.

  pred, target: [B, N, P]; mask: [B, N] (1 = masked). Every volume masks the same number of
  patches, so the mean over a device's shard times the devices is the global mean.
  """
  per_patch = jnp.mean((pred - target) ** 2, axis=-1)
  return jnp.sum(per_patch * mask) / jnp.sum(mask)
