"""Light augmentation of one CT volume, shared by pre-training and fine-tuning (JAX, jit-able)."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def flip_and_scale(x, key, flip_prob: float, intensity: float):
  """Random flips on each axis and an intensity scale/shift of the non-zero voxels.

  x: [D, H, W]. scale ~ U(1 - intensity, 1 + intensity), shift ~ U(-intensity, intensity);
  background (exact zeros: outside the vertebra mask of a pool) stays zero.
  """
  kf, ks, kb = jax.random.split(key, 3)
  flips = jax.random.bernoulli(kf, flip_prob, (3,))
  for ax in range(3):
    x = jnp.where(flips[ax], jnp.flip(x, ax), x)
  scale = 1 + intensity * jax.random.uniform(ks, (), minval=-1, maxval=1)
  shift = intensity * jax.random.uniform(kb, (), minval=-1, maxval=1)
  return x * scale + shift * (x != 0)
