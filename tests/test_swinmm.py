"""SwinMM: the views against numpy rotations and transposes, masking counts, each loss and the
weighted total against numpy computations, config checks, 1 vs 4 devices, and SwinMM ->
fine-tuning end to end (tiny)."""
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import multidevice
import pretrain_finetune
from osteojax.errors import ConfigError
from osteojax.objectives import swinmm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'configs'))
import swinmm as swinmm_config  # noqa: E402

from osteojax.diagnosis import pretrain_swinmm  # noqa: E402


def _np_transpose(v, p):
  """SwinMM's permutations on our [z, y, x] axes: 0 identity, 1 x <-> y, 2 x <-> z."""
  return v if p == 0 else np.swapaxes(v, 2, 2 - p)


def _np_rotate(v, k):
  """k quarter-turns in the (y, z) plane, from y towards z."""
  return np.rot90(v, k, axes=(1, 0))


def test_views_against_numpy():
  v = np.arange(4 * 4 * 4 * 2, dtype=np.float32).reshape(4, 4, 4, 2)   # every voxel distinct
  rotate, transpose = jax.jit(swinmm.rotate), jax.jit(swinmm.transpose)
  for k in range(-1, 5):
    np.testing.assert_array_equal(np.asarray(rotate(v, k)), _np_rotate(v, k))
  for p in range(3):
    got = np.asarray(transpose(v, p))
    np.testing.assert_array_equal(got, _np_transpose(v, p))
    np.testing.assert_array_equal(np.asarray(transpose(got, p)), v)   # its own inverse
  # One quarter-turn by voxel: out[z, y, x] = v[D - 1 - y, z, x] (the y axis turned onto z, x
  # untouched); the swaps by voxel: out[z, y, x] = v[z, x, y] and v[x, y, z].
  r = np.asarray(rotate(v, 1))
  for z, y, x in ((1, 2, 3), (0, 3, 1), (3, 0, 2)):
    assert r[z, y, x, 1] == v[4 - 1 - y, z, x, 1]
    assert transpose(v, 1)[z, y, x, 1] == v[z, x, y, 1]
    assert transpose(v, 2)[z, y, x, 1] == v[x, y, z, 1]
  # Per-example views under vmap (traced k, p), as the loss draws them.
  ks, ps = jnp.array([0, 1, 2, 3]), jnp.array([2, 1, 0, 2])
  vs = np.stack([v + i for i in range(4)])
  rotated = np.asarray(jax.vmap(swinmm.rotate)(vs, ks))
  transposed = np.asarray(jax.vmap(swinmm.transpose)(vs, ps))
  for i in range(4):
    np.testing.assert_array_equal(rotated[i], _np_rotate(vs[i], int(ks[i])))
    np.testing.assert_array_equal(transposed[i], _np_transpose(vs[i], int(ps[i])))


def test_mutual_loss_zero_when_reconstructions_agree_after_transposing_back():
  rng = np.random.default_rng(0)
  rec = rng.normal(size=(3, 4, 4, 4)).astype(np.float32)
  ps = np.array([1, 2, 1])
  mask = (rng.random((3, 4, 4, 4)) < 0.5).astype(np.float32)
  other = np.stack([_np_transpose(r, p) for r, p in zip(rec, ps)])   # the same volumes
  assert float(swinmm.mutual_loss(rec, other, ps, mask)) == 0.0
  # Not brought back (the transposed volumes as they are): they disagree.
  assert float(swinmm.masked_mse(rec, other, mask)) > 0
  # One masked voxel of example 1 changed by 0.5 in rec's frame: 0.25 / (masked voxels).
  i = tuple(np.argwhere(mask[1])[0])
  moved = rec.copy()
  moved[(1,) + i] += 0.5
  other = np.stack([_np_transpose(r, p) for r, p in zip(moved, ps)])
  assert float(swinmm.mutual_loss(rec, other, ps, mask)) == pytest.approx(
      0.25 / mask.sum(), rel=1e-5)
  # ... and an unmasked voxel changed does not count.
  moved = rec.copy()
  moved[(1,) + tuple(np.argwhere(mask[1] == 0)[0])] += 0.5
  other = np.stack([_np_transpose(r, p) for r, p in zip(moved, ps)])
  assert float(swinmm.mutual_loss(rec, other, ps, mask)) == 0.0


def test_patch_mask_counts():
  m = np.asarray(swinmm.patch_mask(jax.random.PRNGKey(0), (16, 16, 16), 4, 0.5))
  cubes = m.reshape(4, 4, 4, 4, 4, 4).transpose(0, 2, 4, 1, 3, 5).reshape(64, 64)
  assert set(np.unique(m)) == {0.0, 1.0}
  assert (cubes.min(1) == cubes.max(1)).all()          # whole 4^3 cubes, masked or not
  assert cubes[:, 0].sum() == 32 == swinmm.num_masked(64, 0.5)
  m2 = np.asarray(swinmm.patch_mask(jax.random.PRNGKey(1), (16, 16, 16), 4, 0.5))
  assert m2.sum() == m.sum() and (m2 != m).any()
  assert swinmm.num_masked(8, 0.75) == 6 and swinmm.num_masked(64, 0.3) == 19


def test_reconstruction_loss_on_masked_voxels_only():
  rng = np.random.default_rng(1)
  pred, target = rng.normal(size=(2, 2, 4, 4, 4)), rng.normal(size=(2, 2, 4, 4, 4))
  mask = (rng.random((2, 2, 4, 4, 4)) < 0.4).astype(np.float64)
  sq = [(pred[idx] - target[idx]) ** 2 for idx in zip(*np.nonzero(mask))]
  assert float(swinmm.masked_mse(pred, target, mask)) == pytest.approx(np.mean(sq), rel=1e-5)
  pred2 = np.where(mask > 0, pred, 1e3)                 # unmasked voxels do not count
  assert float(swinmm.masked_mse(pred2, target, mask)) == pytest.approx(np.mean(sq), rel=1e-5)
  x = rng.random((2, 4, 4, 4)).astype(np.float32)
  want = (x - x.mean((1, 2, 3), keepdims=True)) / np.sqrt(x.var((1, 2, 3), keepdims=True) + 1e-6)
  np.testing.assert_allclose(swinmm.normalized_volumes(x), want, rtol=1e-5, atol=1e-6)


def _np_nt_xent(z1, z2, t):
  z = np.concatenate([z1, z2])
  z = z / np.linalg.norm(z, axis=1, keepdims=True)
  n, out = len(z1), []
  for i in range(2 * n):
    s = np.array([z[i] @ z[j] for j in range(2 * n)]) / t
    pos = (i + n) % (2 * n)
    out.append(-np.log(np.exp(s[pos]) / sum(np.exp(s[j]) for j in range(2 * n) if j != i)))
  return np.mean(out)


def _np_rotation_loss(logits, labels):
  p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  return -np.mean(np.log(p[np.arange(len(labels)), labels]))


def test_contrastive_and_rotation_losses_by_hand():
  rng = np.random.default_rng(2)
  z1, z2 = rng.normal(size=(3, 5)), rng.normal(size=(3, 5))
  assert float(swinmm.nt_xent(z1, z2, 0.5)) == pytest.approx(_np_nt_xent(z1, z2, 0.5), rel=1e-5)
  logits, labels = rng.normal(size=(6, 4)), rng.integers(0, 4, 6)
  assert float(swinmm.rotation_loss(logits, labels)) == pytest.approx(
      _np_rotation_loss(logits, labels), rel=1e-5)


def test_total_loss_against_hand_sum_of_terms():
  """draw_views' inputs against numpy, and the four terms and their weighted sum by hand."""
  c = swinmm_config.get_config('tiny').swinmm
  c.mask_patch = 2
  c.weights = dict(rotation=0.5, contrast=2.0, recon=1.5, mutual=3.0)
  rng = np.random.default_rng(3)
  b, e = 3, 4
  x = rng.random((b, e, e, e)).astype(np.float32)
  drawn = jax.vmap(lambda v, k: pretrain_swinmm.draw_views(v, k, c))(
      x, jax.random.split(jax.random.PRNGKey(0), b))
  d = jax.tree_util.tree_map(np.asarray, drawn)
  for i in range(b):
    for j in range(2):
      np.testing.assert_array_equal(d['views'][i, j], _np_rotate(x[i], d['rot'][i, j]))
      assert d['mask'][i, j].sum() == 4 * 8 and d['perm'][i, j] in (1, 2)
      np.testing.assert_array_equal(d['inputs'][i, j], d['views'][i, j] * (1 - d['mask'][i, j]))
      np.testing.assert_array_equal(d['inputs'][i, 2 + j],
                                    _np_transpose(d['inputs'][i, j], d['perm'][i, j]))
  rot = rng.normal(size=(b, 4, 4)).astype(np.float32)
  z = rng.normal(size=(b, 4, 6)).astype(np.float32)
  rec = rng.normal(size=(b, 4, e, e, e)).astype(np.float32)
  loss, metrics = pretrain_swinmm.swinmm_terms((rot, z, rec), drawn, c)

  def norm(v):
    return (v - v.mean()) / np.sqrt(v.var() + 1e-6)

  back = lambda i, j: _np_transpose(rec[i, 2 + j], d['perm'][i, j])   # transposed back
  rec_sq, rec_t_sq, mut_sq = [], [], []
  for i in range(b):
    for j in range(2):
      t = norm(d['views'][i, j])
      for idx in zip(*np.nonzero(d['mask'][i, j])):
        rec_sq.append((rec[i, j][idx] - t[idx]) ** 2)
        rec_t_sq.append((back(i, j)[idx] - t[idx]) ** 2)
        mut_sq.append((rec[i, j][idx] - back(i, j)[idx]) ** 2)
  want = dict(recon=np.mean(rec_sq) + np.mean(rec_t_sq), mutual=np.mean(mut_sq),
              rotation=_np_rotation_loss(rot[:, :2].reshape(-1, 4), d['rot'].reshape(-1)),
              contrast=_np_nt_xent(z[:, 0], z[:, 1], 0.5))
  for k, v in want.items():
    assert float(metrics[k]) == pytest.approx(v, rel=1e-5), k
  hand = (0.5 * want['rotation'] + 2.0 * want['contrast'] + 1.5 * want['recon']
          + 3.0 * want['mutual'])
  assert float(loss) == pytest.approx(hand, rel=1e-5)


def test_config_checks_and_model_shapes():
  config = swinmm_config.get_config('tiny')
  model = pretrain_swinmm.build_model(config)
  rot, z, rec = jax.eval_shape(lambda: model.init_with_output(
      jax.random.PRNGKey(0), jnp.zeros((2, 16, 16, 16, 1)))[0])
  assert rot.shape == (2, 4) and z.shape == (2, 16) and rec.shape == (2, 16, 16, 16)
  config.data.roi_shape = (16, 16, 16)
  pretrain_swinmm.check_config(config)
  for roi, match in (((16, 16, 8), 'must be a cube'), ((12, 12, 12), 'multiple of patch_size')):
    config.data.roi_shape = roi
    with pytest.raises(ConfigError, match=match):
      pretrain_swinmm.check_config(config)
  config.data.roi_shape = (16, 16, 16)
  config.swinmm.mask_patch = 3
  with pytest.raises(ConfigError, match='mask_patch 3 must divide'):
    pretrain_swinmm.check_config(config)
  config.swinmm.mask_patch, config.swinmm.mask_ratio = 4, 0.001
  with pytest.raises(ConfigError, match='masks none or all'):
    pretrain_swinmm.check_config(config)
  config.model.name = 'resnet3d'
  with pytest.raises(ConfigError, match='must be swin3d'):
    pretrain_swinmm.build_model(config)


def test_swinmm_steps_one_and_four_devices_agree():
  one, four = multidevice.run('pmap_losses.py', 'swinmm')
  np.testing.assert_allclose(one['losses'], four['losses'], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(one['terms'], four['terms'], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(one['proto_sum'], four['proto_sum'], rtol=1e-5, atol=1e-5)
  assert len(set(np.round(one['losses'], 4))) > 1


@pytest.mark.slow
def test_swinmm_then_finetune_tiny(tmp_path):
  """`swinmm` pre-trains the tiny Swin-T and the fine-tuning task starts from its encoder."""
  r = pretrain_finetune.run(tmp_path, 'swinmm', 'swin3d')
  assert '[swinmm] done' in r['pre_log'] and f'encoder from {r["pre"]}' in r['ft_log']
  assert r['predictions'].exists() and 0.0 <= r['probe']['auc'] <= 1.0
