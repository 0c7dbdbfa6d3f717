"""3-D Swin Transformer encoder (Swin-T, as in Swin-UNETR's encoder) in Flax.

Liu et al. 2021 (shifted windows) in 3-D as Hatamizadeh et al. 2022 use it for Swin-UNETR: a
patch embedding of patch_size^3 voxels, four stages of Swin blocks (window attention with a
relative position bias; every second block shifts the windows by half a window and masks the
attention between tokens that the cyclic shift brought together), each stage ending in patch
merging (2^3 neighbours concatenated, LayerNorm, linear 8C -> 2C). At paper size: patch 2,
window 7, depths 2-2-2-2, heads 3-6-12-24, feature size 48 (stage widths 48-96-192-384, 768
after the last merging). As in Swin-UNETR's code, a window larger than the token grid is
clipped to it (and then not shifted), and a grid that the window does not divide is padded
with zeros after the first LayerNorm (the padded tokens take part in attention, as there).

For classification the encoder ends as Swin's classifier does: LayerNorm, then the mean over
the remaining grid: [B, D, H, W, C] -> [B, 16 * feature_size] with four stages. No BatchNorm: no
'batch_stats' collection.

The slim CPU variant (configs: `model.name='swin3d'`, feature size 24, heads 1-2-4-8, window 4
at 32^3) keeps the depth and the block structure; `:paper` restores the sizes above.
"""
from __future__ import annotations

import itertools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

LN_EPS = 1e-5      # torch.nn.LayerNorm's, as in Swin-UNETR


def torch_bias_init(fan_in: int):
  """PyTorch's default bias initialiser of a layer with fan_in inputs: U(+-1 / sqrt(fan_in))."""
  bound = fan_in ** -0.5
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound,
                                                                  bound)


def window_and_shift(grid: Sequence[int], window: int, shift: int):
  """(window, shift) per axis: an axis no longer than the window takes the whole axis as one
  window and is not shifted (Swin-UNETR's get_window_size)."""
  ws = tuple(g if g <= window else window for g in grid)
  ss = tuple(0 if g <= window else shift for g in grid)
  return ws, ss


def window_partition(x, ws):
  """[B, D, H, W, C] (each axis a multiple of ws) -> [B * windows, prod(ws), C]."""
  b, d, h, w, c = x.shape
  x = x.reshape(b, d // ws[0], ws[0], h // ws[1], ws[1], w // ws[2], ws[2], c)
  return x.transpose(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, ws[0] * ws[1] * ws[2], c)


def window_reverse(windows, ws, shape):
  """Inverse of window_partition: [B * windows, prod(ws), C] -> [B, D, H, W, C]."""
  b, d, h, w = shape
  x = windows.reshape(b, d // ws[0], h // ws[1], w // ws[2], ws[0], ws[1], ws[2], -1)
  return x.transpose(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, d, h, w, -1)


def shift_mask(grid: Sequence[int], ws, ss) -> np.ndarray:
  """[windows, N, N] additive attention mask (0 or -100) of shifted windows on a padded grid.

  After the cyclic shift by -ss, a window at the far end of an axis holds tokens from both ends
  of the volume; tokens are labelled by the region (three per shifted axis) they came from, and
  attention between different regions is masked out (Swin's compute_mask).
  """
  regions = np.zeros(tuple(grid), np.int32)
  cuts = [((slice(0, -w), slice(-w, -s), slice(-s, None)) if s else (slice(None),))
          for w, s in zip(ws, ss)]
  for n, (a, b, c) in enumerate(itertools.product(*cuts)):
    regions[a, b, c] = n
  r = np.asarray(window_partition(regions[None, ..., None], ws))[..., 0]   # [windows, N]
  return np.where(r[:, None, :] != r[:, :, None], -100.0, 0.0).astype(np.float32)


def relative_position_index(ws) -> np.ndarray:
  """[N, N] index into the (2 ws - 1)^3 relative position bias table (Swin's, in 3-D)."""
  coords = np.stack(np.meshgrid(*[np.arange(w) for w in ws], indexing='ij')).reshape(3, -1)
  rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0)
  rel = rel + np.array([w - 1 for w in ws])
  return (rel[..., 0] * (2 * ws[1] - 1) * (2 * ws[2] - 1) + rel[..., 1] * (2 * ws[2] - 1)
          + rel[..., 2])


class WindowAttention3D(nn.Module):
  """Multi-head self-attention inside each window, with a learnt relative position bias.

  The bias table has (2 window - 1)^3 rows (the configured window, as in Swin-UNETR: a window
  clipped to a small grid indexes the centre of the same table)."""
  dim: int
  heads: int
  window: int

  @nn.compact
  def __call__(self, x, ws, mask=None):
    bw, n, c = x.shape
    hd = c // self.heads
    qkv = nn.Dense(3 * c, name='qkv')(x).reshape(bw, n, 3, self.heads, hd)
    q, k, v = qkv[:, :, 0] * hd ** -0.5, qkv[:, :, 1], qkv[:, :, 2]
    attn = jnp.einsum('bnhd,bmhd->bhnm', q, k)
    table = self.param('relative_position_bias_table', nn.initializers.truncated_normal(0.02),
                       ((2 * self.window - 1) ** 3, self.heads))
    full = relative_position_index((self.window,) * 3)
    # A clipped window reads the sub-block of the full index of its first prod(ws) positions.
    centre = np.zeros((self.window,) * 3, bool)
    centre[:ws[0], :ws[1], :ws[2]] = True
    sel = np.flatnonzero(centre.reshape(-1))
    idx = full[np.ix_(sel, sel)]
    attn = attn + table[idx.reshape(-1)].reshape(n, n, self.heads).transpose(2, 0, 1)[None]
    if mask is not None:
      nw = mask.shape[0]
      attn = attn.reshape(bw // nw, nw, self.heads, n, n) + jnp.asarray(mask)[None, :, None]
      attn = attn.reshape(bw, self.heads, n, n)
    attn = nn.softmax(attn, axis=-1)
    out = jnp.einsum('bhnm,bmhd->bnhd', attn, v).reshape(bw, n, c)
    return nn.Dense(c, name='proj')(out)


class SwinBlock3D(nn.Module):
  """LayerNorm -> (shifted) window attention -> residual; LayerNorm -> MLP (GELU) -> residual."""
  dim: int
  heads: int
  window: int = 7
  shifted: bool = False
  mlp_ratio: float = 4.0

  @nn.compact
  def __call__(self, x):
    b, d, h, w, c = x.shape
    ws, ss = window_and_shift((d, h, w), self.window, self.window // 2 if self.shifted else 0)
    y = nn.LayerNorm(LN_EPS, name='norm1')(x)
    pad = [(0, (-g) % s) for g, s in zip((d, h, w), ws)]
    y = jnp.pad(y, [(0, 0)] + pad + [(0, 0)])
    grid = y.shape[1:4]
    mask = None
    if any(ss):
      y = jnp.roll(y, tuple(-s for s in ss), axis=(1, 2, 3))
      mask = shift_mask(grid, ws, ss)
    y = WindowAttention3D(c, self.heads, self.window, name='attn')(window_partition(y, ws), ws,
                                                                     mask)
    y = window_reverse(y, ws, (b,) + grid)
    if any(ss):
      y = jnp.roll(y, ss, axis=(1, 2, 3))
    x = x + y[:, :d, :h, :w]
    y = nn.LayerNorm(LN_EPS, name='norm2')(x)
    y = nn.Dense(int(c * self.mlp_ratio), name='fc1')(y)
    y = nn.Dense(c, name='fc2')(nn.gelu(y, approximate=False))
    return x + y


class PatchMerging3D(nn.Module):
  """2^3 neighbouring tokens concatenated (odd axes padded), LayerNorm(8C), linear 8C -> 2C."""

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    x = jnp.pad(x, [(0, 0)] + [(0, g % 2) for g in x.shape[1:4]] + [(0, 0)])
    x = jnp.concatenate([x[:, i::2, j::2, k::2] for i, j, k in
                         itertools.product(range(2), repeat=3)], axis=-1)
    x = nn.LayerNorm(LN_EPS, name='norm')(x)
    return nn.Dense(2 * c, use_bias=False, name='reduction')(x)


class SwinT3D(nn.Module):
  """Swin-T encoder: [B, D, H, W, C] -> pooled features [B, 2^len(depths) * feature_size].

  Each axis of the input must be a multiple of patch_size. `features` gives the normalised
  last grid before the mean (for a pre-training decoder; the same parameters).
  """
  feature_size: int = 48
  depths: Sequence[int] = (2, 2, 2, 2)
  heads: Sequence[int] = (3, 6, 12, 24)
  window: int = 7
  patch_size: int = 2
  mlp_ratio: float = 4.0

  def __call__(self, x, train: bool = True):
    del train                                   # no dropout, no BatchNorm
    return jnp.mean(self.features(x), axis=(1, 2, 3))

  @nn.compact
  def features(self, x):
    """[B, D, H, W, C] -> the last stage's grid after the final LayerNorm, [B, d, h, w, F]
    (d = ceil(D / patch_size / 2^len(depths)), ...)."""
    b, d, h, w, c = x.shape
    p = self.patch_size
    if d % p or h % p or w % p:
      raise ValueError(f'input {x.shape[1:4]} is not a multiple of the patch size {p}')
    # Patch embedding: a p^3 convolution with stride p, written as space-to-depth + Dense. Its
    # bias is initialised as PyTorch's Conv3d (Swin-UNETR's): with a zero bias, every token of
    # an all-zero patch (air, a masked cube) is the zero vector, every LayerNorm on it passes
    # gradients 1 / sqrt(eps) (316) times larger, and through the blocks they overflowed
    # float32 at the first SwinMM step (slim CPU Swin-T, masked 8^3 cubes).
    x = x.reshape(b, d // p, p, h // p, p, w // p, p, c).transpose(0, 1, 3, 5, 2, 4, 6, 7)
    x = nn.Dense(self.feature_size, bias_init=torch_bias_init(p ** 3 * c),
                 name='patch_embed')(x.reshape(b, d // p, h // p, w // p, -1))
    for i, (depth, heads) in enumerate(zip(self.depths, self.heads)):
      for j in range(depth):
        x = SwinBlock3D(x.shape[-1], heads, self.window, shifted=j % 2 == 1,
                        mlp_ratio=self.mlp_ratio, name=f'stage{i + 1}_block{j + 1}')(x)
      x = PatchMerging3D(name=f'stage{i + 1}_merge')(x)
    return nn.LayerNorm(LN_EPS, name='norm')(x)


def encoder_from_config(c) -> SwinT3D:
  """SwinT3D from config.model.swin (feature_size, depths, heads, window, patch_size)."""
  return SwinT3D(c.feature_size, tuple(c.depths), tuple(c.heads), c.window, c.patch_size)
