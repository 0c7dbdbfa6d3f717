"""Symmetric InfoNCE over an N x N similarity matrix (the aligner's loss, paper eq. 1)."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def symmetric_infonce(sim, temperature: float):
  """Mean over k of -(log softmax_j(M[k, j] / tau)[k] + log softmax_j(M[j, k] / tau)[k]).

  sim: [N, N], M[i, j] = similarity of DXA i and MRI j; matching pairs on the diagonal.
  This is eq. 1 of the paper averaged over the N pairs (the authors' code averages the 2N
  terms instead, i.e. half this value; the optimum and Adam's steps are the same).
  """
  if sim.ndim != 2 or sim.shape[0] != sim.shape[1]:
    raise ValueError(f'similarity matrix must be square [N, N], got {sim.shape}')
  if sim.shape[0] == 0:
    raise ValueError('empty batch: no pairs to contrast')
  logits = sim / temperature
  rows = jnp.diagonal(jax.nn.log_softmax(logits, axis=1))
  cols = jnp.diagonal(jax.nn.log_softmax(logits, axis=0))
  return -jnp.mean(rows + cols)


def retrieval_accuracy(sim):
  """Fraction of DXA rows whose best MRI is the matching one (top-1, rows). sim: [N, N]."""
  return jnp.mean(jnp.argmax(sim, axis=1) == jnp.arange(sim.shape[0]))
