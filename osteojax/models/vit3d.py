"""3-D Vision Transformer (ViT) encoder and the MAE decoder, in Flax.

ViT (Dosovitskiy et al. 2021) on volumes: non-overlapping patch_size^3 patches, each linearly
embedded, plus a fixed 3-D sine-cosine position embedding (MAE's choice, in 3-D: a third of the
channels per axis), then pre-norm Transformer blocks (LayerNorm -> multi-head self-attention ->
residual; LayerNorm -> MLP with GELU -> residual) and a final LayerNorm. No class token: the
encoder's feature for classification is the mean of its tokens ([B, D, H, W, C] -> [B, dim]),
MAE's global-pool fine-tuning. `tokens(x, keep)` runs the encoder on the kept patches only
(MAE's encoder sees the visible 25%).

Paper size (ViT-B as MAE and UNETR use it): patch 16, dim 768, depth 12, heads 12 (88.2M
parameters at 64^3 with one channel). The slim CPU variant: patch 8, dim 192, depth 6, heads 3.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

LN_EPS = 1e-6      # MAE's LayerNorm epsilon


def patchify(x, p: int):
  """[B, D, H, W, C] -> [B, (D/p)(H/p)(W/p), p^3 C] (patches in raster order, voxels z-y-x-c)."""
  b, d, h, w, c = x.shape
  if d % p or h % p or w % p:
    raise ValueError(f'input {x.shape[1:4]} is not a multiple of the patch size {p}')
  x = x.reshape(b, d // p, p, h // p, p, w // p, p, c).transpose(0, 1, 3, 5, 2, 4, 6, 7)
  return x.reshape(b, (d // p) * (h // p) * (w // p), p ** 3 * c)


def unpatchify(t, p: int, grid, c: int):
  """Inverse of patchify: [B, N, p^3 C] -> [B, D, H, W, C] for a token grid (gd, gh, gw)."""
  b = t.shape[0]
  gd, gh, gw = grid
  x = t.reshape(b, gd, gh, gw, p, p, p, c).transpose(0, 1, 4, 2, 5, 3, 6, 7)
  return x.reshape(b, gd * p, gh * p, gw * p, c)


def sincos_3d(grid, dim: int) -> np.ndarray:
  """[prod(grid), dim] fixed position embedding: for each axis, sin and cos of its coordinate at
  dim // 6 frequencies (1 / 10000^(k / (dim // 6))); the remaining channels are zero."""
  f = dim // 6
  omega = 1.0 / 10000 ** (np.arange(f) / max(f, 1))
  coords = np.stack(np.meshgrid(*[np.arange(g) for g in grid], indexing='ij'), -1).reshape(-1, 3)
  parts = []
  for a in range(3):
    ang = coords[:, a:a + 1] * omega[None]
    parts += [np.sin(ang), np.cos(ang)]
  emb = np.concatenate(parts, 1)
  return np.pad(emb, ((0, 0), (0, dim - emb.shape[1]))).astype(np.float32)


class Block(nn.Module):
  """Pre-norm Transformer block: x + MSA(LN(x)); x + MLP(LN(x))."""
  dim: int
  heads: int
  mlp_ratio: float = 4.0

  @nn.compact
  def __call__(self, x):
    y = nn.LayerNorm(LN_EPS, name='norm1')(x)
    x = x + nn.MultiHeadDotProductAttention(num_heads=self.heads, qkv_features=self.dim,
                                            name='attn')(y, y)
    y = nn.LayerNorm(LN_EPS, name='norm2')(x)
    y = nn.Dense(int(self.dim * self.mlp_ratio), name='fc1')(y)
    return x + nn.Dense(self.dim, name='fc2')(nn.gelu(y, approximate=False))


class ViT3D(nn.Module):
  """ViT encoder: [B, D, H, W, C] -> [B, dim] (mean of the final tokens)."""
  patch_size: int = 16
  dim: int = 768
  depth: int = 12
  heads: int = 12
  mlp_ratio: float = 4.0

  def setup(self):
    self.patch_embed = nn.Dense(self.dim)
    self.blocks = [Block(self.dim, self.heads, self.mlp_ratio) for _ in range(self.depth)]
    self.norm = nn.LayerNorm(LN_EPS)

  def grid(self, shape):
    return tuple(s // self.patch_size for s in shape[1:4])

  def tokens(self, x, keep=None):
    """Final tokens [B, N or n_keep, dim]; keep: [B, n_keep] patch indices (None: all)."""
    t = self.patch_embed(patchify(x, self.patch_size))
    t = t + jnp.asarray(sincos_3d(self.grid(x.shape), self.dim))[None]
    if keep is not None:
      t = jnp.take_along_axis(t, keep[..., None], axis=1)
    for blk in self.blocks:
      t = blk(t)
    return self.norm(t)

  def __call__(self, x, train: bool = True):
    del train                                    # no dropout, no BatchNorm
    return jnp.mean(self.tokens(x), axis=1)


class MAEDecoder(nn.Module):
  """MAE's light decoder: visible tokens embedded to dec_dim, mask tokens put in the masked
  places, position embedding, Transformer blocks, LayerNorm, linear to the patch's voxels."""
  dim: int = 512
  depth: int = 8
  heads: int = 16
  out_dim: int = 16 ** 3

  @nn.compact
  def __call__(self, visible, keep, n_tokens: int, grid):
    b, n_keep, _ = visible.shape
    v = nn.Dense(self.dim, name='embed')(visible)
    mask_token = self.param('mask_token', nn.initializers.normal(0.02), (1, 1, self.dim))
    full = jnp.broadcast_to(mask_token, (b, n_tokens, self.dim))
    full = full.at[jnp.arange(b)[:, None], keep].set(v)
    full = full + jnp.asarray(sincos_3d(grid, self.dim))[None]
    for i in range(self.depth):
      full = Block(self.dim, self.heads, name=f'block{i + 1}')(full)
    full = nn.LayerNorm(LN_EPS, name='norm')(full)
    return nn.Dense(self.out_dim, name='pred')(full)


def encoder_from_config(c) -> ViT3D:
  """ViT3D from config.model.vit (patch_size, dim, depth, heads)."""
  return ViT3D(c.patch_size, c.dim, c.depth, c.heads)
