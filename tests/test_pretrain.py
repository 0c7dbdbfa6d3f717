"""Pre-training pieces: Sinkhorn codes, the swapped-prediction loss, models, the pmapped step on
1 vs 4 simulated devices, deterministic batches, checkpoint fallback."""
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from osteojax.models import heads, resnet3d
from osteojax.objectives import swav
from osteojax.train import lib

import multidevice  # tests/multidevice.py

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_sinkhorn_codes_marginals():
  z = jax.random.normal(jax.random.PRNGKey(0), (24, 16))
  c = jax.random.normal(jax.random.PRNGKey(1), (16, 6))
  scores = heads.l2_normalize(z) @ heads.l2_normalize(c, axis=0)
  codes, err = swav.sinkhorn_codes(scores, 0.05, 200, 1e-6)
  np.testing.assert_allclose(codes.sum(1), 1.0, atol=1e-4)          # each example: one unit
  np.testing.assert_allclose(codes.sum(0), 24 / 6, rtol=1e-3)       # equipartition
  assert err < 1e-3
  assert (codes >= 0).all()
  # higher score -> more mass on that prototype, for the same example
  i = 3
  hi = scores[i].argmax()
  lo = scores[i].argmin()
  assert codes[i, hi] > codes[i, lo]


def test_swapped_prediction_loss_by_hand():
  tau = 0.5
  s = jnp.array([[[1.0, 0.0]], [[0.0, 2.0]]])        # V=2, B=1, K=2
  q = jnp.array([[[0.25, 0.75]], [[0.6, 0.4]]])
  p1 = np.exp([2.0, 0.0]) / np.exp([2.0, 0.0]).sum()
  p2 = np.exp([0.0, 4.0]) / np.exp([0.0, 4.0]).sum()
  want = -(0.6 * np.log(p1[0]) + 0.4 * np.log(p1[1])) - (0.25 * np.log(p2[0]) + 0.75 * np.log(p2[1]))
  got = swav.swapped_prediction_loss(s, q, tau)
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_resnet34_3d_size_and_slim_forward():
  full = resnet3d.ResNet3D(axis_name=None)
  shapes = jax.eval_shape(lambda: full.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 32, 1)),
                                            train=False))
  n = sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(shapes['params']))
  assert 62e6 < n < 65e6                          # ResNet34-3D: ~63M parameters
  slim = resnet3d.ResNet3D(stage_sizes=(1, 1), widths=(4, 8), axis_name=None)
  v = slim.init(jax.random.PRNGKey(0), jnp.zeros((2, 16, 16, 16, 1)), train=False)
  out = slim.apply(v, jnp.ones((2, 16, 16, 16, 1)), train=False)
  assert out.shape == (2, 8) and np.isfinite(out).all()


@pytest.mark.parametrize('shape,k,stride,cin', [
    ((1, 12, 12, 12), 7, 2, 1),      # the stem: space-to-depth
    ((1, 9, 8, 7), 3, 2, 3),         # a strided block conv on odd sizes: strided im2col
    ((1, 5, 6, 4), 3, 1, 4),         # stride 1: im2col
    ((1, 4, 4, 4), 1, 1, 3)])        # the 1^3 projection
def test_conv3d_impls_equal_flax_conv(shape, k, stride, cin):
  x = jax.random.normal(jax.random.PRNGKey(0), shape + (cin,))
  ref = flax.linen.Conv(5, (k,) * 3, (stride,) * 3, use_bias=False)
  v = ref.init(jax.random.PRNGKey(1), x)
  want = ref.apply(v, x)
  g = jax.random.normal(jax.random.PRNGKey(2), want.shape)
  # the kernel gradient of a random projection of the output, against nn.Conv's
  grad = lambda m: jax.jit(jax.grad(lambda p: jnp.sum(m.apply({'params': p}, x) * g)))
  dw_ref = grad(ref)(v['params'])['kernel']
  for impl in ('lax', 'im2col'):
    conv = resnet3d.Conv3D(5, k, stride, impl)
    v2 = conv.init(jax.random.PRNGKey(1), x)
    np.testing.assert_array_equal(v2['params']['kernel'], v['params']['kernel'])  # same init
    np.testing.assert_allclose(jax.jit(conv.apply)(v, x), want, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(grad(conv)(v['params'])['kernel'], dw_ref, atol=1e-4, rtol=1e-4)
  with pytest.raises(ValueError, match='unknown conv impl'):
    resnet3d.Conv3D(5, k, stride, 'fft').init(jax.random.PRNGKey(1), x)


@pytest.mark.parametrize('shape', [(1, 8, 8, 8, 3), (1, 7, 6, 5, 2)])
def test_separable_max_pool_equals_flax_max_pool(shape):
  x = jax.random.normal(jax.random.PRNGKey(0), shape)     # no tied maxima
  ref = lambda x: flax.linen.max_pool(x, (3, 3, 3), (2, 2, 2), padding='SAME')
  got = resnet3d.max_pool_separable(x, 3, 2)
  np.testing.assert_array_equal(got, ref(x))
  g = jax.random.normal(jax.random.PRNGKey(1), got.shape)
  np.testing.assert_allclose(jax.grad(lambda x: jnp.sum(resnet3d.max_pool_separable(x) * g))(x),
                             jax.grad(lambda x: jnp.sum(ref(x) * g))(x), atol=1e-6)


def test_resnet3d_conv_impls_agree():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 16, 1))
  nets = {impl: resnet3d.ResNet3D((1, 1, 1), (4, 8, 8), axis_name=None, conv=impl)
          for impl in ('lax', 'im2col')}
  v, v2 = (jax.jit(lambda k, x, n=n: n.init(k, x, train=False))(jax.random.PRNGKey(1), x)
            for n in nets.values())
  jax.tree_util.tree_map(np.testing.assert_array_equal, v, v2)   # same parameters, same init
  for train, atol in ((False, 1e-5), (True, 1e-3)):
    # In training mode each BatchNorm divides by the SD of the batch's 16 values at the last
    # stage, which magnifies the two convolutions' float rounding (a 1.7e-4 difference on an
    # AMD EPYC); in eval mode (initial statistics) there is no such magnification.
    out = {k: jax.jit(lambda v, x, n=n: n.apply(v, x, train=train, mutable=['batch_stats'])[0])(
        v, x) for k, n in nets.items()}
    assert float(jnp.abs(out['lax']).max()) > 0.1          # not a vacuous all-zero comparison
    np.testing.assert_allclose(out['im2col'], out['lax'], atol=atol, rtol=0)


def test_prototypes_normalized():
  p = {'prototypes': {'kernel': jnp.array([[3.0, 0.0], [4.0, 2.0]])}, 'x': jnp.ones(2)}
  out = heads.normalize_prototypes(p)
  np.testing.assert_allclose(jnp.linalg.norm(out['prototypes']['kernel'], axis=0), 1.0)
  assert (out['x'] == 1).all()


def test_batch_indices_deterministic_epochs():
  a = np.concatenate([lib.batch_indices(10, 4, 3, s) for s in range(5)])
  b = np.concatenate([lib.batch_indices(10, 4, 3, s) for s in range(5)])
  assert (a == b).all()
  assert sorted(a[:10]) == list(range(10))          # each epoch is a permutation
  assert sorted(a[10:20]) == list(range(10))
  assert not (lib.batch_indices(10, 4, 4, 0) == a[:4]).all()


def test_swapped_prediction_multicrop_by_hand():
  """Codes of the first Vc views only; every other view predicts each (SwAV multi-crop)."""
  tau = 1.0
  s = jnp.array([[[1.0, 0.0]], [[0.0, 2.0]], [[0.5, -0.5]]])    # V=3 (2 global + 1 small)
  q = jnp.array([[[0.25, 0.75]], [[0.6, 0.4]]])                   # Vc=2
  logp = np.log(np.exp(np.asarray(s[:, 0])) / np.exp(np.asarray(s[:, 0])).sum(1, keepdims=True))
  ce = lambda qs, t: -(np.asarray(qs) * logp[t]).sum()
  # s=0: views 1, 2 predict q0; s=1: views 0, 2 predict q1; mean over t then s, times 2.
  want = 2 * ((ce(q[0, 0], 1) + ce(q[0, 0], 2)) / 2 + (ce(q[1, 0], 0) + ce(q[1, 0], 2)) / 2) / 2
  np.testing.assert_allclose(swav.swapped_prediction_loss(s, q, tau), want, rtol=1e-6)


def test_queue_codes_are_the_batch_rows_of_sinkhorn_over_queue_and_batch():
  key = jax.random.PRNGKey(3)
  z = heads.l2_normalize(jax.random.normal(key, (20, 8)))
  c = heads.l2_normalize(jax.random.normal(jax.random.PRNGKey(4), (8, 5)), axis=0)
  scores = z @ c
  got, _ = swav.queue_codes(scores[12:], scores[:12], 0.05, 200, 1e-6)
  full, _ = swav.sinkhorn_codes(scores, 0.05, 200, 1e-6)
  np.testing.assert_allclose(got, full[12:], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-4)     # each batch example: one unit
  # with the queue the batch alone need not be equipartitioned
  assert float(jnp.abs(got.sum(0) - 8 / 5).max()) > 1e-3


def test_one_and_four_devices_agree():
  """TP-SwAV views with the queue in use from step 2 (tiny config: queue of 2 batches)."""
  one, four = multidevice.run('pmap_losses.py', 'pool')
  assert one['devices'] == 1 and four['devices'] == 4
  np.testing.assert_allclose(one['losses'], four['losses'], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(one['proto_sum'], four['proto_sum'], rtol=1e-5, atol=1e-5)
  assert len(set(np.round(one['losses'], 4))) > 1      # it does train


@pytest.mark.slow      # the same gather / pmean path as the TP-SwAV test above, ~1 min
def test_swav_multicrop_one_and_four_devices_agree():
  one, four = multidevice.run('pmap_losses.py', 'crops')
  np.testing.assert_allclose(one['losses'], four['losses'], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(one['proto_sum'], four['proto_sum'], rtol=1e-5, atol=1e-5)


def test_checkpoint_fallback_on_corruption(tmp_path):
  state = {'w': np.arange(4.0), 'b': np.array(1.0)}
  ck = lib.Checkpoints(str(tmp_path), max_to_keep=3, every=1)
  ck.save(1, state)
  ck.save(2, {'w': np.arange(4.0) * 2, 'b': np.array(2.0)})
  ck.close()
  # truncate every file of the newest checkpoint
  for root, _, files in os.walk(tmp_path / 'checkpoints' / '2'):
    for f in files:
      with open(os.path.join(root, f), 'r+b') as fh:
        fh.truncate(3)
  ck = lib.Checkpoints(str(tmp_path), max_to_keep=3, every=1)
  restored, step = ck.restore(state)
  assert step == 1 and np.allclose(restored['w'], np.arange(4.0))


class _Pools:
  def __init__(self, x):
    self.x = x
    self.shape = x.shape

  def __len__(self):
    return len(self.x)

  def read(self, idx):
    return self.x[list(idx)]


def test_recomputed_batch_stats_are_the_data_statistics():
  """With one full batch, precise BN makes running-average outputs equal to training-mode
  (batch-statistics) outputs on that batch: the statistics are the inputs' own."""
  import sys as _sys
  _sys.path.insert(0, os.path.join(ROOT, 'configs'))
  import tp_swav
  from osteojax.diagnosis import pretrain, probe
  c = tp_swav.get_config('tiny')
  rng = np.random.default_rng(0)
  x = (rng.random((32, 5, 16, 16, 16)) * 0.3 + 0.4).astype(np.float32)
  model = pretrain.build_model(c)
  state = pretrain.init_state(c, model, (16, 16, 16), pretrain.optimizer_config(c, 1), 1)
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  fixed = probe.recompute_batch_stats(model, variables, _Pools(x))
  inp = jnp.asarray(x[:, 0, ..., None])
  z_eval, _ = model.apply(fixed, inp, train=False)
  z_train, _ = jax.vmap(lambda v: model.apply(variables, v, train=True,
                                              mutable=['batch_stats'])[0],
                        axis_name='batch')(inp[None])
  np.testing.assert_allclose(np.asarray(z_eval), np.asarray(z_train[0]), rtol=2e-3, atol=2e-4)
  # the init's running averages (mean 0, var 1) are not these statistics
  z_init, _ = model.apply(variables, inp, train=False)
  assert np.abs(np.asarray(z_init) - np.asarray(z_train[0])).max() > 10 * 2e-4
  assert 'queue' in fixed['batch_stats']
  # the probe recomputes on the encoder alone (probe.load_encoder_state): the same statistics
  from osteojax import models
  encoder = models.encoder_from_config(c.model)
  alone = probe.recompute_batch_stats(encoder, {'params': state.params['encoder'],
                                                'batch_stats': state.batch_stats['encoder']},
                                      _Pools(x))
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                         alone['batch_stats'], fixed['batch_stats']['encoder'])
