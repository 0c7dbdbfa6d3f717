"""VoCo: overlap targets against voxel counting on an explicit index grid, the crops and targets
the loss function uses against explicit slices and counts, the loss against a numpy
computation, config checks, 1 vs 4 devices, and VoCo -> fine-tuning end to end (tiny)."""
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import multidevice
import pretrain_finetune
from osteojax.diagnosis import pretrain_voco
from osteojax.train import lib
from osteojax.errors import ConfigError
from osteojax.objectives import voco

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'configs'))
import voco as voco_config  # noqa: E402


def _label_volume(shape, grid):
  """Each voxel's base crop index in raster order (z, y, x), from its coordinates."""
  z, y, x = np.meshgrid(*[np.arange(s) for s in shape], indexing='ij')
  d, h, w = (s // grid for s in shape)
  return (z // d) * grid * grid + (y // h) * grid + x // w


@pytest.mark.parametrize('shape,grid', [((16, 16, 16), 2), ((8, 12, 16), 2), ((12, 12, 12), 3)])
def test_overlap_targets_count_voxels(shape, grid):
  crop = voco.crop_shape(shape, grid)
  labels = _label_volume(shape, grid)
  far = [s - c for s, c in zip(shape, crop)]                 # the last position on each axis
  rng = np.random.default_rng(0)
  starts = np.array([[0, 0, 0], far, [0, far[1], 1], [far[0], 0, far[2] // 2],
                     [1, 1, 1]] + [[rng.integers(0, f + 1) for f in far] for _ in range(6)])
  got = np.asarray(voco.overlap_targets(jnp.asarray(starts), crop, grid))
  for s, row in zip(starts, got):
    box = labels[s[0]:s[0] + crop[0], s[1]:s[1] + crop[1], s[2]:s[2] + crop[2]]
    want = np.bincount(box.ravel(), minlength=grid ** 3) / box.size
    np.testing.assert_allclose(row, want, atol=1e-7)
  np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-6)
  assert got[0].max() == 1.0 and got[1].max() == 1.0          # aligned with a base crop
  # the crops are those boxes, and base crop k is the region of label k
  vol = jnp.asarray(labels, jnp.float32)
  np.testing.assert_array_equal(
      voco.random_crops(vol, jnp.asarray(starts), crop)[2],
      labels[0:crop[0], far[1]:far[1] + crop[1], 1:1 + crop[2]])
  bases = np.asarray(voco.base_crops(vol, grid))
  assert bases.shape == (grid ** 3,) + crop
  for k in range(grid ** 3):
    assert (bases[k] == k).all()


class _Flatten:
  """A stand-in encoder whose embedding of a crop is its voxels: z = crop.ravel()."""

  def apply(self, variables, x, train, mutable):
    assert train and mutable == ['batch_stats']
    return x.reshape(x.shape[0], -1), {'batch_stats': variables['batch_stats']}


def test_loss_fn_pairs_crops_with_their_targets(monkeypatch):
  """With flip_prob 0, what the loss function hands the encoder and the loss: each example's
  base crops (raster order) then the slices at its drawn starts, and each random crop's target
  row its voxel-count overlap with each base crop (explicit indices on a non-cubic ROI)."""
  c = voco_config.get_config('tiny')
  c.voco.num_crops, c.voco.flip_prob = 5, 0.0
  shape, grid = (8, 12, 16), c.voco.grid
  crop = voco.crop_shape(shape, grid)
  vol = np.random.default_rng(0).random((3,) + shape).astype(np.float32)   # voxels distinct
  # the loss term receives (z_base, z_random, targets): hand them back as metrics
  monkeypatch.setattr(voco, 'voco_loss', lambda zb, zr, t, w: (
      jnp.float32(0), dict(z_base=zb, z_random=zr, targets=t)))
  loss_fn = pretrain_voco.make_loss_fn(c, _Flatten())
  rng = jax.random.PRNGKey(3)
  _, (_, got) = jax.vmap(lambda v: loss_fn({}, {}, {'volume': v}, rng, 0), axis_name=lib.AXIS)(
      vol[None])
  starts = jax.vmap(lambda v: pretrain_voco.draw_crops(v, rng, c.voco)[2], axis_name=lib.AXIS)(
      vol[None])
  got, starts = jax.tree_util.tree_map(lambda a: np.asarray(a[0]), got), np.asarray(starts[0])
  labels = _label_volume(shape, grid)
  assert got['z_base'].shape == (3, grid ** 3, np.prod(crop))
  assert got['targets'].shape == (3, 5, grid ** 3) and len(set(map(tuple, starts[0]))) > 1
  for i in range(3):
    for kz, ky, kx in np.ndindex(grid, grid, grid):
      box = vol[i, kz * crop[0]:(kz + 1) * crop[0], ky * crop[1]:(ky + 1) * crop[1],
                kx * crop[2]:(kx + 1) * crop[2]]
      np.testing.assert_array_equal(got['z_base'][i, (kz * grid + ky) * grid + kx], box.ravel())
    for r, (z, y, x) in enumerate(starts[i]):
      box = (slice(z, z + crop[0]), slice(y, y + crop[1]), slice(x, x + crop[2]))
      np.testing.assert_array_equal(got['z_random'][i, r], vol[i][box].ravel())
      count = np.bincount(labels[box].ravel(), minlength=grid ** 3)
      np.testing.assert_allclose(got['targets'][i, r], count / count.sum(), atol=1e-7)
  assert not np.array_equal(starts[0], starts[1])                # per-example draws


def test_random_starts_cover_every_position():
  starts = np.asarray(voco.random_starts(jax.random.PRNGKey(0), 4000, (16, 12, 8), (8, 6, 4)))
  for a, hi in enumerate((8, 6, 4)):
    assert set(starts[:, a].tolist()) == set(range(hi + 1))   # the border included


def test_loss_by_hand():
  base = np.array([[[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]])    # b=1, K=3, F=2
  rand = np.array([[[3.0, 0.0], [-1.0, 0.5]]])               # R=2
  y = np.array([[[0.25, 0.0, 0.75], [0.0, 1.0, 0.0]]])

  def cos(a, b):
    return a @ b / (np.linalg.norm(a) * np.linalg.norm(b))

  logits = np.array([[max(cos(q, k), 0.0) for k in base[0]] for q in rand[0]])
  # q1 = (1, 0): cos 1, 0, 1/sqrt(2); q2 = (-1, .5)/|.|: -0.894 -> 0, 0.447, -0.316 -> 0
  np.testing.assert_allclose(logits, [[1, 0, 2 ** -0.5], [0, 1 / 5 ** 0.5, 0]], atol=1e-12)
  pre = -np.mean(np.log(1 - np.abs(y[0] - logits) + 1e-6))
  reg = np.mean([abs(cos(base[0][i], base[0][j])) for i, j in ((0, 1), (0, 2), (1, 2))])
  assert reg == pytest.approx((0 + 2 ** -0.5 + 2 ** -0.5) / 3)
  loss, m = voco.voco_loss(jnp.asarray(base), jnp.asarray(rand), jnp.asarray(y), 0.5)
  assert float(m['prediction_loss']) == pytest.approx(pre, rel=1e-5)
  assert float(m['regularization_loss']) == pytest.approx(reg, rel=1e-5)
  assert float(loss) == pytest.approx(pre + 0.5 * reg, rel=1e-5)
  assert float(m['top1']) == 0.5          # q1: logit base 0, target base 2; q2: both 1
  # the prediction term reaches the base crops through no gradient; the regulariser does
  g = jax.grad(lambda b: voco.voco_loss(b, jnp.asarray(rand), jnp.asarray(y), 0.0)[0])(
      jnp.asarray(base))
  assert float(jnp.abs(g).max()) == 0.0
  g = jax.grad(lambda b: voco.regularization_loss(b))(jnp.asarray(base))
  assert float(jnp.abs(g).max()) > 0.0


def test_config_checks():
  c = voco_config.get_config()
  assert pretrain_voco.check_config(c) == (16, 16, 16)       # 2 x 2 x 2 crops of the 32^3 ROI
  assert voco_config.get_config('paper').voco.proj_dim == 2048
  for field, value, match in [('voco.grid', 3, 'does not divide'), ('voco.grid', 1, '>= 2'),
                              ('voco.num_crops', 0, 'num_crops'),
                              ('voco.reg_weight', -1.0, 'reg_weight'),
                              ('model.name', 'vit3d', 'resnet3d')]:
    bad = voco_config.get_config()
    section, key = field.split('.')
    bad[section][key] = value
    with pytest.raises(ConfigError, match=match):
      pretrain_voco.build_model(bad)


def test_voco_steps_one_and_four_devices_agree():
  one, four = multidevice.run('pmap_losses.py', 'voco')
  np.testing.assert_allclose(one['losses'], four['losses'], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(one['proto_sum'], four['proto_sum'], rtol=1e-5, atol=1e-5)
  # BatchNorm's running statistics, summed: float32 sums in another order (pmean over devices)
  np.testing.assert_allclose(one['stats_sum'], four['stats_sum'], rtol=1e-4)
  assert np.isfinite(one['losses']).all()


@pytest.mark.slow
def test_voco_then_finetune_tiny(tmp_path):
  """`voco` pre-trains the tiny ResNet and the fine-tuning task starts from its encoder."""
  from osteojax.train import pretrained
  r = pretrain_finetune.run(tmp_path, 'voco')
  assert '[voco] done' in r['pre_log'] and f'encoder from {r["pre"]}' in r['ft_log']
  assert r['predictions'].exists() and 0.0 <= r['probe']['auc'] <= 1.0
  _, enc, _ = pretrained.load_encoder(r['pre'])
  assert 'stem' in enc['params'] and 'stem_bn' in enc['batch_stats']
