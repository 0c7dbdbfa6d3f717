"""SwAV / TP-SwAV objective: Sinkhorn codes over the global batch and the swapped prediction.

Eq. (1) of the TP-SwAV paper: for views t, s of one vertebra,
  L(P_t, P_s) = l(P_t, Q_s) + l(P_s, Q_t),  l(P_t, Q_s) = -sum_k q_s^k log p_t^k,
  p_t^k = softmax_k(P_t . C_k / tau),
with codes Q from entropic optimal transport between the batch and the K prototypes (uniform
marginals), computed with ott-jax on the scores of the *global* batch, without gradient.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from ott.geometry import geometry
from ott.solvers import linear


def sinkhorn_codes(scores, epsilon: float, iterations: int, threshold: float = 1e-4):
  """Codes for scores [B, K] (global batch): rows sum to 1, each prototype gets B/K in total.

  Returns (codes [B, K], marginal_error: max relative deviation of the plan's marginals).
  """
  b, k = scores.shape
  geom = geometry.Geometry(cost_matrix=-lax.stop_gradient(scores), epsilon=epsilon)
  out = linear.solve(geom, threshold=threshold, max_iterations=iterations)
  plan = out.matrix
  err = jnp.maximum(jnp.max(jnp.abs(plan.sum(1) * b - 1)), jnp.max(jnp.abs(plan.sum(0) * k - 1)))
  return lax.stop_gradient(plan * b), err


def swapped_prediction_loss(scores_views, codes_views, temperature: float):
  """Eq. (1) averaged over the batch. scores_views: [V, B, K]; codes_views: [Vc, B, K], the
  codes of the first Vc <= V views (SwAV's multi-crop: codes of the global crops only).

  For V = Vc = 2 this is l(P_1, Q_2) + l(P_2, Q_1). In general, as SwAV: for each coded view s
  the mean over the other views t != s of l(P_t, Q_s), averaged over s, times 2 so that the
  scale does not depend on V.
  """
  v, vc = scores_views.shape[0], codes_views.shape[0]
  logp = jax.nn.log_softmax(scores_views / temperature, axis=-1)       # [V, B, K]
  cross = -jnp.einsum('sbk,tbk->stb', codes_views, logp)              # l(P_t, Q_s): [Vc, V, B]
  off = 1 - jnp.eye(vc, v)
  per_example = jnp.einsum('stb,st->b', cross, off) * 2 / (vc * (v - 1))
  return per_example.mean()


def queue_codes(scores, queue_scores, epsilon: float, iterations: int, threshold: float):
  """Codes of the batch scores [B, K] computed with a queue of earlier embeddings' scores
  [Q, K] (SwAV's queue for small batches): Sinkhorn over the Q + B rows, the batch's rows kept.

  Returns (codes [B, K], marginal error of the whole plan).
  """
  q = queue_scores.shape[0]
  codes, err = sinkhorn_codes(jnp.concatenate([queue_scores, scores]), epsilon, iterations,
                              threshold)
  return codes[q:], err


def prototype_entropy(scores, temperature: float):
  """Entropy (nats) of the batch-mean prediction softmax(scores / tau), scores [B, K]:
  log K when the model spreads its predictions over all prototypes, 0 when it uses one."""
  p = jax.nn.softmax(scores / temperature, axis=-1).mean(0)
  return -jnp.sum(p * jnp.log(jnp.maximum(p, 1e-12)))
