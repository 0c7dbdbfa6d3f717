"""Pre-training pieces: Sinkhorn codes, the swapped-prediction loss, models, the pmapped step on
1 vs 4 simulated devices, deterministic batches, checkpoint fallback."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

from osteojax.models import heads, resnet3d
from osteojax.objectives import swav
from osteojax.train import lib

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


def _losses(devices, views):
  env = dict(os.environ, PYTHONPATH=ROOT,
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
  res = subprocess.run([sys.executable, os.path.join(ROOT, 'tests', 'pmap_losses.py'), views],
                       capture_output=True, encoding='utf-8', errors='replace', env=env, timeout=600)
  assert res.returncode == 0, res.stderr[-3000:]
  return json.loads(res.stdout.strip().splitlines()[-1])


def test_one_and_four_devices_agree():
  one, four = _losses(1, 'pool'), _losses(4, 'pool')
  assert one['devices'] == 1 and four['devices'] == 4
  np.testing.assert_allclose(one['losses'], four['losses'], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(one['proto_sum'], four['proto_sum'], rtol=1e-5, atol=1e-5)
  assert len(set(np.round(one['losses'], 4))) > 1      # it does train


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
