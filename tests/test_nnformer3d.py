"""nnFormer's encoder: shapes (slim, tiny), the paper-size parameter count against a per-layer
count, a GV-MSA block against attention computed token by token, the down-sampling
convolution's padding and output grid against a direct convolution, 1 vs 4 devices."""
import itertools
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from osteojax import models
from osteojax.errors import ConfigError
from osteojax.models import nnformer3d


@pytest.mark.parametrize('input_shape', [(32, 32, 32), (16, 16, 16)])
def test_slim_encoder_shapes(input_shape):
  """Slim variant (embedding 24, four stages: 8 x 24 features); at 16^3 the token grids are
  8-4-2-1 (the stage 3 window is clipped to 2, GV-MSA on one token)."""
  enc = nnformer3d.NNFormer3D(24, (2, 2, 2, 2), (1, 2, 4, 8), (4, 4, 8), 2)
  x = jnp.ones((2,) + input_shape + (1,))
  out, variables = jax.eval_shape(lambda: enc.init_with_output(jax.random.PRNGKey(0), x))
  assert out.shape == (2, 192) and set(variables) == {'params'}
  feats = jax.eval_shape(lambda v: enc.apply(v, x, method=enc.features), variables)
  g = input_shape[0] // 2
  assert [f.shape for f in feats] == [(2, g, g, g, 24), (2, g // 2, g // 2, g // 2, 48),
                                      (2, g // 4, g // 4, g // 4, 96),
                                      (2, g // 8, g // 8, g // 8, 192)]


def test_tiny_encoder_runs():
  """The tiny config (embedding 8, depths 2-1, window 2) on 16^3: finite features that differ
  between examples; patch 4 quarters the grid; a bad input size is refused."""
  c = ml_collections.ConfigDict(dict(name='nnformer3d', nnformer=dict(
      embed_dim=8, depths=(2, 1), heads=(1, 2), windows=(2,), patch_size=2)))
  enc = models.encoder_from_config(c)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 16, 16, 16, 1))
  v = jax.jit(enc.init)(jax.random.PRNGKey(0), x)
  y = jax.jit(enc.apply)(v, x)
  assert y.shape == (2, 16) and bool(jnp.isfinite(y).all())
  assert float(jnp.abs(y[0] - y[1]).max()) > 1e-3
  four = nnformer3d.NNFormer3D(8, (2, 1), (1, 2), (2,), 4)
  feats = jax.eval_shape(lambda: four.init_with_output(jax.random.PRNGKey(0), x,
                                                      method=four.features)[0])
  assert [f.shape[1:4] for f in feats] == [(4, 4, 4), (2, 2, 2)]
  with pytest.raises(ValueError, match='not a multiple of the patch size'):
    enc.init(jax.random.PRNGKey(0), jnp.ones((1, 15, 16, 16, 1)))


def test_encoder_from_config_and_bad_sizes():
  c = ml_collections.ConfigDict(dict(name='nnformer3d', nnformer=dict(
      embed_dim=8, depths=(2, 1), heads=(1, 2), windows=(2,), patch_size=2)))
  enc = models.encoder_from_config(c)
  assert isinstance(enc, nnformer3d.NNFormer3D) and enc.windows == (2,)
  c.nnformer.windows = (2, 2)
  with pytest.raises(ConfigError, match='one window per stage but the last'):
    models.encoder_from_config(c)
  c.nnformer.windows, c.nnformer.patch_size = (2,), 3
  with pytest.raises(ConfigError, match='patch_size must be 2 or 4'):
    models.encoder_from_config(c)


def _block_count(c, heads, window):
  """A Swin block of width c: norm1, qkv, relative position table, proj, norm2, MLP."""
  return (2 * c + 3 * c * c + 3 * c + (2 * window - 1) ** 3 * heads + c * c + c + 2 * c
          + 4 * c * c + 4 * c + 4 * c * c + c)


def _per_layer_count(e=96, heads=(3, 6, 12, 24), windows=(4, 4, 8, 4), grids=(32, 16, 8, 4)):
  """nnFormer's encoder layer by layer (the code's Synapse layout: token grids 32-16-8-4, the
  last window = the last grid), without the per-stage norms that only feed the decoder."""
  conv = lambda cin, cout: 27 * cin * cout + cout                # 3^3, bias
  n = conv(1, e // 2) + 2 * (e // 2) + conv(e // 2, e // 2) + 2 * (e // 2)   # embed1, 2 LNs
  n += conv(e // 2, e) + 2 * e + conv(e, e)                      # embed2: one LN (last)
  n += 2 * e                                                     # embedding LayerNorm
  for i, (h, w, g) in enumerate(zip(heads, windows, grids)):
    c = e * 2 ** i
    n += 2 * _block_count(c, h, min(w, g))                       # depth 2
    if i < 3:
      n += 2 * c + conv(c, 2 * c)                                # down-sampling: LN, conv
  return n + 2 * e * 8                                           # final LayerNorm


def test_paper_size_parameter_count():
  """Embedding 96, heads 3-6-12-24, patch 2 at 64^3. nnFormer's paper gives parameter counts
  of its whole segmentation network only, so no published figure is compared here."""
  enc = nnformer3d.NNFormer3D()
  shapes = jax.eval_shape(lambda: enc.init(jax.random.PRNGKey(0), jnp.ones((1, 64, 64, 64, 1))))
  n = sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(shapes))
  assert n == _per_layer_count() == 29_834_502


def _layer_norm(v, p):
  return ((v - v.mean(-1, keepdims=True)) / np.sqrt(v.var(-1, keepdims=True) + 1e-5)
          * p['scale'] + p['bias'])


@pytest.mark.parametrize('grid', [(3, 3, 3), (2, 3, 2)])
def test_gv_msa_block_equals_token_by_token_attention(grid):
  """Every token attends to every token of the grid, with the bias of their offset in a
  (2 max(grid) - 1)^3 table, computed one query token at a time in numpy."""
  c, heads = 6, 2
  x = jax.random.normal(jax.random.PRNGKey(0), (2,) + grid + (c,))
  block = nnformer3d.gv_msa_block(c, heads, grid, 'gv')
  params = block.init(jax.random.PRNGKey(1), x)['params']
  table_rows = (2 * max(grid) - 1) ** 3
  assert params['attn']['relative_position_bias_table'].shape == (table_rows, heads)
  params['attn']['relative_position_bias_table'] = jax.random.normal(
      jax.random.PRNGKey(2), (table_rows, heads))              # non-zero: a wrong offset shows
  got = np.asarray(block.apply({'params': params}, x))
  p = jax.tree_util.tree_map(np.asarray, params)
  w, hd = max(grid), c // heads
  coords = list(itertools.product(*[range(g) for g in grid]))
  dense = lambda v, q: v @ q['kernel'] + q['bias']
  want = np.zeros_like(got)
  for b in range(2):
    tokens = np.asarray(x[b]).reshape(-1, c)
    y = _layer_norm(tokens, p['norm1'])
    q, k, v = np.split(dense(y, p['attn']['qkv']), 3, axis=-1)
    out = np.zeros_like(tokens)
    for i, ci in enumerate(coords):
      for h in range(heads):
        s = slice(h * hd, (h + 1) * hd)
        logits = []
        for cj, kj in zip(coords, k):
          o = [a - b_ + w - 1 for a, b_ in zip(ci, cj)]
          bias = p['attn']['relative_position_bias_table'][
              (o[0] * (2 * w - 1) + o[1]) * (2 * w - 1) + o[2], h]
          logits.append(q[i, s] @ kj[s] / math.sqrt(hd) + bias)
        a = np.exp(np.array(logits) - max(logits))
        out[i, s] = (a / a.sum()) @ v[:, s]
    t = tokens + dense(out, p['attn']['proj'])
    m = dense(_layer_norm(t, p['norm2']), p['fc1'])
    m = 0.5 * m * (1 + np.vectorize(math.erf)(m / math.sqrt(2)))        # exact GELU
    want[b] = (t + dense(m, p['fc2'])).reshape(grid + (c,))
  np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)


def _direct_conv(x, kernel, bias, stride, pad):
  """PyTorch's Conv3d(padding=pad) by explicit sums over the taps (numpy)."""
  k = kernel.shape[0]
  xp = np.pad(x, ((0, 0),) + ((pad, pad),) * 3 + ((0, 0),))
  out = [(n + 2 * pad - k) // stride + 1 for n in x.shape[1:4]]
  y = np.zeros((x.shape[0], *out, kernel.shape[-1]))
  for i, j, l in itertools.product(*[range(o) for o in out]):
    patch = xp[:, i * stride:i * stride + k, j * stride:j * stride + k, l * stride:l * stride + k]
    y[:, i, j, l] = np.einsum('bdhwc,dhwcf->bf', patch, kernel) + bias
  return y


def test_downsampling_conv_padding_and_grid():
  """The stride-2 3^3 convolution padded 1 on both sides (PyTorch's, as nnFormer's) against a
  direct convolution, for each way it is computed: XLA's ('lax') and 'im2col', which is
  space-to-depth for a narrow input (1 channel, even and odd edges) and strided im2col for a
  wider one (4 channels): output grid (g + 1) // 2, output voxel i centred on input voxel 2i.
  One compilation for the three."""
  rng = np.random.default_rng(0)
  narrow = rng.normal(size=(1, 8, 7, 6, 1)).astype(np.float32)
  wide = rng.normal(size=(1, 5, 4, 3, 4)).astype(np.float32)
  params = [{'conv': {'kernel': rng.normal(size=(3, 3, 3, c, 5)).astype(np.float32)},
             'bias': rng.normal(size=5).astype(np.float32)} for c in (1, 4)]
  apply = lambda impl, p, x: nnformer3d.BiasConv3D(5, 3, 2, impl).apply({'params': p}, x)
  got = jax.jit(lambda: (apply('lax', params[0], narrow), apply('im2col', params[0], narrow),
                         apply('im2col', params[1], wide)))()
  for y, p, x in zip(got, (params[0], params[0], params[1]), (narrow, narrow, wide)):
    assert y.shape[1:4] == tuple((g + 1) // 2 for g in x.shape[1:4])
    np.testing.assert_allclose(y, _direct_conv(x, p['conv']['kernel'], p['bias'], 2, 1),
                               atol=1e-5, rtol=1e-5)
  # the reference's centring: the centre tap alone picks input voxel 2i
  centre = np.zeros((3, 3, 3, 4, 1), np.float32)
  centre[1, 1, 1] = 1.0
  np.testing.assert_allclose(_direct_conv(wide, centre, np.zeros(1), 2, 1)[..., 0],
                             wide[:, ::2, ::2, ::2].sum(-1), atol=1e-6)


@pytest.mark.parametrize('g', [2, 3, 4, 5, 8])
def test_downsample_module_grid(g):
  """nnFormer's down-sampling between stages: [B, g, g, g, C] -> [B, (g + 1) // 2 ..., 2C]."""
  down = nnformer3d.Downsample()
  x = jnp.ones((1, g, g, g, 6))
  y = jax.eval_shape(lambda: down.init_with_output(jax.random.PRNGKey(0), x))[0]
  assert y.shape == (1, (g + 1) // 2, (g + 1) // 2, (g + 1) // 2, 12)


@pytest.mark.slow
def test_nnformer_finetune_step_one_and_four_devices_agree():
  """Two MoE fine-tuning steps of the tiny nnFormer encoder on 1 and 4 simulated devices (8^3
  volumes, one a device). Slow: the default suite trains the same encoder on 1 and 4 devices in
  Alice's test (test_alice.py::test_alice_steps_one_and_four_devices_agree), and the MoE head in
  the ResNet one (test_finetune.py)."""
  import multidevice
  one, four = multidevice.run('pmap_losses.py', 'finetune_nnformer')
  np.testing.assert_allclose(one['losses'], four['losses'], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(one['proto_sum'], four['proto_sum'], rtol=1e-5, atol=1e-5)
  assert len(set(np.round(one['losses'], 4))) > 1
