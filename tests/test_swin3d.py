"""3-D Swin-T encoder: shifted-window mask, relative positions and a block against brute-force
attention built from token coordinates; shapes; the parameter count against a per-layer count."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from osteojax import models
from osteojax.models import swin3d


def test_shift_mask_against_token_coordinates():
  """Swin masks attention between tokens of one shifted window that the cyclic shift brought
  from opposite ends of the volume: built here from where each token came from."""
  grid, w, s = (6, 4, 4), (2, 2, 2), (1, 1, 1)
  mask = swin3d.shift_mask(grid, w, s)                    # [windows, N, N]
  # Shifted position p holds the token from (p + s) mod G; window k covers p in [k w, k w + w).
  coords = np.stack(np.meshgrid(*[np.arange(g) for g in grid], indexing='ij'), -1)
  orig = (coords + np.array(s)) % np.array(grid)
  wins = np.asarray(swin3d.window_partition(orig[None], w))                  # [windows, N, 3]
  apart = (np.abs(wins[:, :, None] - wins[:, None, :]) >= np.array(w)).any(-1)
  np.testing.assert_array_equal(mask == -100, apart)
  assert apart.any() and not apart.all()                  # both cases occur
  assert swin3d.shift_mask(grid, w, (0, 0, 0)).max() == 0   # no shift: nothing masked


def test_relative_position_index_is_one_entry_per_offset():
  ws = (2, 3, 2)
  idx = swin3d.relative_position_index(ws)
  coords = list(itertools.product(*[range(w) for w in ws]))
  offsets = {}
  for i, p in enumerate(coords):
    for j, q in enumerate(coords):
      off = tuple(a - b for a, b in zip(p, q))
      assert offsets.setdefault(off, idx[i, j]) == idx[i, j]
  assert len(set(offsets.values())) == len(offsets) == np.prod([2 * w - 1 for w in ws])
  assert idx.min() == 0 and idx.max() == len(offsets) - 1


def _brute_force_block(params, x, window, shift, heads):
  """A Swin block computed token by token: each token attends to the tokens of its shifted
  window that were its neighbours (not wrapped), with the bias of their offset."""
  b, d, h, w, c = x.shape
  grid = np.array([d, h, w])
  ln = lambda v, p: ((v - v.mean(-1, keepdims=True)) / np.sqrt(v.var(-1, keepdims=True) + 1e-5)
                     * p['scale'] + p['bias'])
  dense = lambda v, p: v @ np.asarray(p['kernel']) + np.asarray(p['bias'])
  p = jax.tree_util.tree_map(np.asarray, params)
  coords = np.stack(np.meshgrid(*[np.arange(g) for g in grid], indexing='ij'), -1).reshape(-1, 3)
  win = ((coords - shift) % grid) // window                 # window of each token after shift
  same = (win[:, None] == win[None]).all(-1)
  offset = coords[:, None] - coords[None]                   # original offsets
  near = (np.abs(offset) < window).all(-1)
  allowed = same & near
  table = p['attn']['relative_position_bias_table']
  ofs = np.clip(offset + window - 1, 0, 2 * window - 2)     # far pairs are masked out anyway
  bias = table[ofs[..., 0] * (2 * window - 1) ** 2 + ofs[..., 1] * (2 * window - 1)
               + ofs[..., 2]]                              # [N, N, heads]
  xt = np.asarray(x).reshape(b, -1, c)
  y = ln(xt, p['norm1'])
  qkv = dense(y, p['attn']['qkv']).reshape(b, -1, 3, heads, c // heads)
  q, k, v = qkv[:, :, 0] * (c // heads) ** -0.5, qkv[:, :, 1], qkv[:, :, 2]
  logits = np.einsum('bnhd,bmhd->bhnm', q, k) + bias.transpose(2, 0, 1)[None]
  logits = np.where(allowed[None, None], logits, -np.inf)
  a = np.exp(logits - logits.max(-1, keepdims=True))
  a = a / a.sum(-1, keepdims=True)
  out = dense(np.einsum('bhnm,bmhd->bnhd', a, v).reshape(b, -1, c), p['attn']['proj'])
  xt = xt + out
  y = dense(ln(xt, p['norm2']), p['fc1'])
  y = 0.5 * y * (1 + np.vectorize(__import__('math').erf)(y / np.sqrt(2)))   # exact GELU
  return (xt + dense(y, p['fc2'])).reshape(x.shape)


@pytest.mark.parametrize('shifted', [False, True])
def test_block_equals_brute_force_attention(shifted):
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 4, 4, 4))
  block = swin3d.SwinBlock3D(4, 2, window=2, shifted=shifted)
  params = block.init(jax.random.PRNGKey(1), x)['params']
  # A non-zero bias table, so that a wrong offset index shows.
  params = jax.tree_util.tree_map(lambda a: a, params)         # a mutable copy
  params['attn']['relative_position_bias_table'] = jax.random.normal(
      jax.random.PRNGKey(2), params['attn']['relative_position_bias_table'].shape)
  got = block.apply({'params': params}, x)
  want = _brute_force_block(params, x, 2, 1 if shifted else 0, 2)
  np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize('input_shape,expect', [((32, 32, 32), 384), ((12, 12, 12), 384),
                                                ((8, 8, 8), 384)])
def test_slim_encoder_shapes(input_shape, expect):
  """Slim variant (feature size 24, four stages: 16 x 24 features); 12^3 pads the 6^3 token
  grid to windows of 4, 8^3 clips the window to the 4^3 grid."""
  enc = swin3d.SwinT3D(24, (2, 2, 2, 2), (1, 2, 4, 8), 4)
  x = jnp.ones((2,) + input_shape + (1,))
  out, variables = jax.eval_shape(lambda: enc.init_with_output(jax.random.PRNGKey(0), x))
  assert out.shape == (2, expect) and set(variables) == {'params'}
  if input_shape == (8, 8, 8):
    x = jax.random.normal(jax.random.PRNGKey(1), x.shape)
    y = jax.jit(lambda k, x: enc.apply(enc.init(k, x), x))(jax.random.PRNGKey(0), x)
    assert bool(jnp.isfinite(y).all()) and float(jnp.abs(y[0] - y[1]).max()) > 1e-3


def test_zero_patches_keep_gradients_bounded():
  """An all-zero window (air, a masked cube) must not blow up the gradients: the patch
  embedding's bias is PyTorch's U(+-1/sqrt(fan_in)) draw, so its tokens are not the zero vector
  on which every LayerNorm would pass gradients 1/sqrt(eps) times larger (with a zero bias they
  reached ~1e38 at the first SwinMM step)."""
  enc = swin3d.SwinT3D(24, (2, 2, 2, 2), (1, 2, 4, 8), 4)
  x = jax.random.uniform(jax.random.PRNGKey(1), (2, 16, 16, 16, 1))
  x = x.at[:, :8, :8, :8].set(0.0).at[:, 8:, 8:, :8].set(0.0)     # two whole 4^3-token windows
  params = enc.init(jax.random.PRNGKey(0), x)['params']
  bias = np.asarray(params['patch_embed']['bias'])
  assert np.abs(bias).max() <= 8 ** -0.5 and np.abs(bias).min() > 0
  grads = jax.jit(jax.grad(lambda p: jnp.sum(enc.apply({'params': p}, x) ** 2)))(params)
  worst = max(float(jnp.abs(g).max()) for g in jax.tree_util.tree_leaves(grads))
  assert np.isfinite(worst) and worst < 1e3, worst


def _per_layer_count(f=48, depths=(2, 2, 2, 2), heads=(3, 6, 12, 24), window=7, patch=2):
  """Swin-UNETR's encoder (MONAI's SwinTransformer, merging after every stage), counted layer by
  layer, plus the classification LayerNorm."""
  n = patch ** 3 * 1 * f + f                                   # patch embedding (conv + bias)
  c = f
  for depth, h in zip(depths, heads):
    block = (2 * c                                             # norm1
             + 3 * c * c + 3 * c                               # qkv
             + (2 * window - 1) ** 3 * h                       # relative position bias table
             + c * c + c                                       # proj
             + 2 * c                                           # norm2
             + 4 * c * c + 4 * c + 4 * c * c + c)              # MLP
    n += depth * block + 2 * 8 * c + 8 * c * 2 * c             # merging: LayerNorm, reduction
    c *= 2
  return n + 2 * c                                             # final LayerNorm


def test_paper_size_parameter_count():
  enc = swin3d.SwinT3D()                                       # paper size
  x = jnp.ones((1, 64, 64, 64, 1))
  shapes = jax.eval_shape(lambda: enc.init(jax.random.PRNGKey(0), x))
  n = sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(shapes))
  assert n == _per_layer_count() == 8_063_538
  # The published figure is for the whole Swin-UNETR (62M, Hatamizadeh et al. 2022, BTCV:
  # 14 classes). Its convolutional encoder blocks and decoder (MONAI's UnetrBasicBlock /
  # UnetrUpBlock, instance norm without affine parameters), counted by hand, plus this encoder
  # without the classification LayerNorm (MONAI normalises without parameters) give it back.
  conv = lambda cin, cout, k: cin * cout * k ** 3
  res = lambda cin, cout: conv(cin, cout, 3) + conv(cout, cout, 3) + (
      conv(cin, cout, 1) if cin != cout else 0)
  f = 48
  decoder = (res(1, f) + res(f, f) + res(2 * f, 2 * f) + res(4 * f, 4 * f) + res(16 * f, 16 * f)
             + sum(conv(cin, cout, 2) + res(2 * cout, cout)
                   for cin, cout in ((16 * f, 8 * f), (8 * f, 4 * f), (4 * f, 2 * f),
                                     (2 * f, f), (f, f)))
             + f * 14 + 14)
  total = n - 2 * 16 * f + decoder
  assert abs(total - 62.0e6) < 0.01 * 62.0e6, total          # 62.19M


def test_encoder_from_config_names():
  import ml_collections
  c = ml_collections.ConfigDict(dict(name='swin3d', swin=dict(
      feature_size=8, depths=(1, 1), heads=(1, 2), window=2, patch_size=2)))
  enc = models.encoder_from_config(c)
  assert isinstance(enc, swin3d.SwinT3D) and enc.feature_size == 8
  c.name = 'vit'
  with pytest.raises(ValueError, match="unknown config.model.name 'vit'"):
    models.encoder_from_config(c)


@pytest.mark.slow
def test_swin_finetune_step_one_and_four_devices_agree():
  """Three MoE fine-tuning steps of the tiny Swin-T on 1 and 4 simulated devices. Slow: the
  default suite trains the same encoder on 1 and 4 devices in SwinMM's test
  (test_swinmm.py::test_swinmm_steps_one_and_four_devices_agree), and the MoE head in the
  ResNet one (test_finetune.py)."""
  import multidevice
  one, four = multidevice.run('pmap_losses.py', 'finetune_swin')
  np.testing.assert_allclose(one['losses'], four['losses'], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(one['proto_sum'], four['proto_sum'], rtol=1e-5, atol=1e-5)
  assert len(set(np.round(one['losses'], 4))) > 1
