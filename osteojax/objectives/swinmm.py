"""SwinMM's pre-training objectives (Wang et al., MICCAI 2023) on volumes: the views, patch
masking and the four losses (masked reconstruction, mutual learning, rotation, contrast).

A volume is [D, H, W] (z, y, x). The views are those of SwinMM's code (Pretrain/utils:
view_transforms.py, view_ops.py), which works on MONAI's RAS arrays [X, Y, Z] (the patient's
x, y, z); we apply its index operations with its X, Y, Z read as our x, y, z: a rotation by k
quarter-turns in the sagittal (y, z) plane, turning y towards z (the code's rot90(k, (Y, Z));
np.rot90(v, k, axes=(1, 0))), and a transposition that swaps x with y or x with z (the code's
permutations 1, X <-> Y, and 2, X <-> Z; 0 is the identity). Both need equal edges; a
transposition is its own inverse. Our ROIs run inferior -> superior, anterior -> posterior and
right -> left (osteojax/data/extract.py), the code's RAS arrays inferior -> superior,
posterior -> anterior and left -> right; so in the patient's frame our quarter-turn k is the
code's -k (rotation labels 1 and 3 trade places, immaterial for a label drawn uniformly), our
x <-> y swap is the code's X <-> Y, and our x <-> z swap is the code's X <-> Z followed by a
half-turn in the (z, x) plane.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from osteojax.models.heads import l2_normalize
from osteojax.objectives import mae

NUM_ROTATIONS = 4
TRANSPOSES = ((0, 1, 2), (0, 2, 1), (2, 1, 0))    # axis orders: identity, y<->x, z<->x


# ------------------------------------------------------------------------------------ views
def rotate(v, k):
  """v [D, H, W, ...] turned k (traced int, any sign) quarter-turns in the (H, D) plane, from H
  towards D, as np.rot90(v, k, axes=(1, 0))."""
  return lax.switch(jnp.mod(k, NUM_ROTATIONS),
                    [lambda a, i=i: jnp.rot90(a, i, axes=(1, 0)) for i in range(NUM_ROTATIONS)], v)


def transpose(v, p):
  """v [D, H, W, ...] with its spatial axes in the order TRANSPOSES[p] (p traced: 0, 1 or 2)."""
  rest = tuple(range(3, v.ndim))
  return lax.switch(p, [lambda a, t=t: jnp.transpose(a, t + rest) for t in TRANSPOSES], v)


# ------------------------------------------------------------------------------------ masking
def num_masked(n_patches: int, mask_ratio: float) -> int:
  """Masked (zeroed) patches per volume: round(n ratio), the fraction SwinMM's --mask_ratio
  names. Its mask_rand_patch draws round(n ratio) patches and zeroes the others,
  n - round(n ratio): the same count at its ratio 0.5 when n is even (4^3 patches here), the
  complement at other ratios."""
  return int(round(n_patches * mask_ratio))


def patch_mask(key, shape, patch: int, mask_ratio: float):
  """[D, H, W] float32, 1 on the voxels of num_masked(...) random patch^3 cubes (a uniformly
  random subset of the patch grid), 0 elsewhere. Each edge must be a multiple of patch."""
  grid = tuple(s // patch for s in shape)
  n = grid[0] * grid[1] * grid[2]
  order = jnp.argsort(jax.random.uniform(key, (n,)))
  m = jnp.zeros((n,), jnp.float32).at[order[:num_masked(n, mask_ratio)]].set(1.0)
  m = m.reshape(grid)
  for ax in range(3):
    m = jnp.repeat(m, patch, axis=ax)
  return m


# ------------------------------------------------------------------------------------ losses
def normalized_volumes(x, eps: float = 1e-6):
  """Each volume [B, ...] standardised by the mean and variance of all its voxels (SwinMM's
  norm_pix_loss reshapes its target to [B, C, voxels]: one mean per volume, not per patch)."""
  flat = x.reshape(x.shape[0], 1, -1)
  return mae.normalized_targets(flat, eps).reshape(x.shape)


def masked_mse(pred, target, mask):
  """Mean squared error over the voxels where mask is 1. pred, target, mask: [B, ...].

  Every volume masks the same number of voxels, so the mean over a device's shard averaged
  over the devices is the global mean.
  """
  return jnp.sum((pred - target) ** 2 * mask) / jnp.sum(mask)


def mutual_loss(rec, rec_other, p, mask):
  """SwinMM's mutual learning: the reconstruction of the transposed masked input, transposed
  back, should agree with rec on the masked voxels.

  rec, rec_other: [B, D, H, W]; rec_other is of rec's input transposed by p [B]; mask
  [B, D, H, W] in rec's orientation. Both reconstructions receive gradients (as in SwinMM).
  """
  return masked_mse(rec, jax.vmap(transpose)(rec_other, p), mask)


def rotation_loss(logits, labels):
  """Cross-entropy of the rotation classifier. logits [N, 4], labels [N] in 0..3."""
  logp = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=-1))


def nt_xent(z1, z2, temperature: float):
  """SwinMM's (SimCLR's) contrastive loss of N pairs (z1[i], z2[i]) [N, F].

  Cosine similarities s of the 2N embeddings; each embedding's positive is its pair; the mean
  over the 2N embeddings of -log(exp(s_pos / t) / sum over the 2N - 1 others of exp(s / t)).
  """
  z = l2_normalize(jnp.concatenate([z1, z2]), eps=1e-12)       # F.normalize's eps
  n = z1.shape[0]
  logits = z @ z.T / temperature
  logits = jnp.where(jnp.eye(2 * n, dtype=bool), -jnp.inf, logits)
  pos = jnp.concatenate([jnp.arange(n, 2 * n), jnp.arange(n)])
  logp = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.mean(logp[jnp.arange(2 * n), pos])


def total_loss(terms: dict, weights) -> jnp.ndarray:
  """sum over the weights' names of weight * term (names: rotation, contrast, recon, mutual)."""
  return sum(weights[k] * terms[k] for k in ('rotation', 'contrast', 'recon', 'mutual'))
