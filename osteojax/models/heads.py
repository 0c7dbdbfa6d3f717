"""Heads: SwAV projection MLP to the unit sphere and the prototype layer."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


def l2_normalize(x, axis=-1, eps=1e-8):
  """x / ||x||, with a finite gradient at x = 0 (unlike dividing by jnp.linalg.norm)."""
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=axis, keepdims=True), eps * eps))


class SwAVModel(nn.Module):
  """Encoder + projection MLP + prototypes.

  x: [B, D, H, W, C] -> (z [B, proj_dim] unit-norm embeddings, scores [B, K] = z . C_k).
  The prototypes C ([proj_dim, K], param 'prototypes/kernel') are re-normalised to unit columns
  after every update by `normalize_prototypes`, as in SwAV.
  """
  encoder: nn.Module
  hidden_dim: int = 512
  proj_dim: int = 128
  num_prototypes: int = 64
  axis_name: str | None = 'batch'

  @nn.compact
  def __call__(self, x, train: bool = True):
    h = self.encoder(x, train)
    h = nn.Dense(self.hidden_dim, name='proj_hidden')(h)
    h = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                     axis_name=self.axis_name if train else None, name='proj_bn')(h)
    z = l2_normalize(nn.Dense(self.proj_dim, name='proj_out')(nn.relu(h)))
    scores = nn.Dense(self.num_prototypes, use_bias=False, name='prototypes')(z)
    return z, scores

  def embed(self, x):
    """Frozen-encoder features for probes: [B, D, H, W, C] -> [B, F] (running statistics)."""
    return self.encoder(x, False)


def normalize_prototypes(params):
  """Unit-norm columns of params['prototypes']['kernel'] ([proj_dim, K]); others untouched."""
  k = params['prototypes']['kernel']
  return {**params, 'prototypes': {'kernel': l2_normalize(k, axis=0)}}
