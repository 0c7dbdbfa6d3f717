"""Registration of generated feature-map pairs whose transform is known exactly."""
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from osteojax.align import refine, register, synthetic
from osteojax.align.rigid import Rigid2D

import multidevice  # tests/multidevice.py

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC, TGT = (20, 12), (32, 18)


def _pair(seed, noise=0.5, channels=32, max_angle_deg=8.0):
  rng = np.random.default_rng(seed)
  t = synthetic.random_transform(rng, SRC, TGT, np.deg2rad(max_angle_deg), margin=1.0)
  src, tgt = synthetic.make_pair(SRC, TGT, t, channels, 2.0, noise, seed)
  return src, tgt, t


def test_generated_pair_is_the_field_through_the_transform():
  t = Rigid2D(0.1, (5.0, 3.0), (4.0, 4.0))
  src, tgt = synthetic.make_pair((6, 5), (20, 20), t, channels=4, length=2.0, seed=3)
  np.testing.assert_allclose(np.linalg.norm(src, axis=-1), 1.0, atol=1e-5)
  # a source cell whose image under t is a grid point equals that target cell
  t0 = Rigid2D(0.0, (7.0, 2.0))
  src0, tgt0 = synthetic.make_pair((6, 5), (20, 20), t0, channels=4, length=2.0, seed=3)
  np.testing.assert_allclose(src0[1, 2], tgt0[1 + 2, 2 + 7], atol=1e-6)


def test_fft_correlation_equals_direct_convolution():
  rng = np.random.default_rng(0)
  tgt = jnp.asarray(rng.normal(size=(9, 7, 3)), jnp.float32)
  srcs = jnp.asarray(rng.normal(size=(2, 4, 3, 3)), jnp.float32)
  margin = (2, 1)
  got = register._correlate(tgt, srcs, margin)
  # direct: cross-correlation of the zero-padded target with each source (lax.conv is one)
  padded = jnp.pad(tgt, ((margin[0], margin[0]), (margin[1], margin[1]), (0, 0)))
  want = lax.conv_general_dilated(padded[None], jnp.moveaxis(srcs, 0, -1), (1, 1), 'VALID',
                                  dimension_numbers=('NHWC', 'HWIO', 'NHWC'))[0]
  want = jnp.moveaxis(want, -1, 0)                                 # [K, shifts_y, shifts_x]
  np.testing.assert_allclose(got[:, :want.shape[1], :want.shape[2]], want, atol=1e-4)
  # entry (i, j) is the shift (j - mx, i - my): check one by hand
  k, i, j = 1, 3, 2
  ty, tx = i - margin[0], j - margin[1]
  s = sum(float(srcs[k, y, x] @ tgt[y + ty, x + tx]) for y in range(4) for x in range(3)
          if 0 <= y + ty < 9 and 0 <= x + tx < 7)
  assert abs(float(got[k, i, j]) - s) < 1e-4


def test_rotate_and_warp_by_hand():
  m = jnp.asarray(np.random.default_rng(1).normal(size=(5, 5, 3)), jnp.float32)
  m = m / jnp.linalg.norm(m, axis=-1, keepdims=True)
  rot, valid = register.rotate_map(m, np.pi / 2, (2.0, 2.0))
  # out(u) = m(R^-1 (u - c) + c): u = (3, 2) -> R^-1 (1, 0) = (0, -1) -> (2, 1)
  np.testing.assert_allclose(rot[2, 3], m[1, 2], atol=1e-5)
  assert valid.min() == 1.0
  w, v = register.warp(m, jnp.array([0.0, 1.0, 0.0]), (2.0, 2.0), (5, 5))
  np.testing.assert_allclose(w[3, 1], m[3, 2], atol=1e-5)           # out(u) = m(u + (1, 0))
  assert v[0, 4] == 0.0 and float(jnp.abs(w[0, 4]).sum()) == 0.0
  img = m * 3.0 + 5.0                                               # an image: no unit vectors
  wi, _ = register.warp(img, jnp.array([0.0, 1.0, 0.0]), (2.0, 2.0), (5, 5), unit=False)
  np.testing.assert_allclose(wi[3, 1], img[3, 2], atol=1e-5)
  x = refine.make_input(img[:3], img, jnp.array([0.0, 0.0, 1.0]), unit=False)
  np.testing.assert_allclose(x[1, 2, 3:6], img[2, 2], atol=1e-5)    # warped DXA beside the MRI
  np.testing.assert_allclose(x[1, 2, :3], img[1, 2], atol=1e-5)


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_dense_recovers_known_transform(seed):
  src, tgt, truth = _pair(seed)
  res = register.dense(src, tgt, angles=np.deg2rad(np.arange(-10, 10.1, 2)))
  # tolerance: a quarter cell on average, 1 degree (half the 2-degree angle step)
  assert register.mean_grid_error(res.transform, truth, SRC) < 0.25
  assert abs(np.rad2deg(res.transform.angle - truth.angle)) < 1.0
  coarse = register.dense(src, tgt, angles=np.deg2rad(np.arange(-10, 10.1, 2)), subgrid=False)
  assert register.mean_grid_error(coarse.transform, truth, SRC) < 1.0
  assert np.argmax(res.angle_scores) == np.argmin(np.abs(np.deg2rad(np.arange(-10, 10.1, 2))
                                                         - truth.angle))


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_salient_recovers_known_transform(seed):
  src, tgt, truth = _pair(seed)
  res = register.salient(src, tgt, seed=seed)
  assert register.mean_grid_error(res.transform, truth, SRC) < 0.1
  assert res.lmeds_inliers.sum() >= 10


def test_methods_survive_a_third_of_confident_wrong_cells():
  src, tgt, truth = _pair(5)
  rng = np.random.default_rng(5)
  src = src.copy()
  flat = src.reshape(-1, src.shape[-1])
  bad = rng.permutation(len(flat))[:len(flat) // 3]
  # wrong cells: exact copies of random target cells (they pass the ratio test as outliers)
  flat[bad] = tgt.reshape(-1, tgt.shape[-1])[rng.integers(0, TGT[0] * TGT[1], len(bad))]
  sal = register.salient(src, tgt)
  assert register.mean_grid_error(sal.transform, truth, SRC) < 0.2
  assert not sal.ransac_inliers.all()               # the copies were matched, then rejected
  den = register.dense(src, tgt)
  assert register.mean_grid_error(den.transform, truth, SRC) < 0.5


def test_bad_maps_clear_errors():
  src, tgt, _ = _pair(0)
  with pytest.raises(register.RegistrationError, match='channels'):
    register.dense(src[..., :4], tgt)
  with pytest.raises(register.RegistrationError, match='NaN'):
    register.salient(np.full_like(src, np.nan), tgt)
  with pytest.raises(register.RegistrationError, match=r'\[h, w, C\]'):
    register.dense(src[0], tgt)
  with pytest.raises(register.RegistrationError, match='ratio test'):
    register.salient(np.ones_like(src) / np.sqrt(src.shape[-1]), tgt)   # every cell alike


def test_pixel_and_floor():
  t = Rigid2D(0.05, (2.0, -1.0), (9.5, 5.5))
  px = register.to_pixels(t, 8)
  cells = np.array([[0.0, 0.0], [3.0, 7.0]])
  np.testing.assert_allclose(px.apply(8 * cells + 3.5), 8 * t.apply(cells) + 3.5, atol=1e-9)
  kp = np.array([[10.0, 20.0], [30.0, 25.0], [20.0, 60.0]])
  floor = register.keypoint_floor(kp, t.apply(kp))
  assert floor.close_to(t, kp, 1e-9)


def test_refinement_regressor_reduces_error(tmp_path):
  sys.path.insert(0, os.path.join(ROOT, 'configs'))
  import refine as refine_config
  config = refine_config.get_config('tiny')
  d = config.data
  src, tgt, params = refine.generated_pairs(d, d.train_pairs, d.seed)
  model, variables = refine.train(config, str(tmp_path), src, tgt, params)
  fn = refine.make_refine_fn(model, variables, config)
  res = refine.evaluate(fn, config.perturb, *refine.generated_pairs(d, d.test_pairs, 99),
                        seed=7)
  assert res['after_mean'] < 0.6 * res['before_mean']
  assert res['improved_fraction'] >= 0.75


def test_parameter_algebra_matches_rigid2d():
  c = (3.0, 4.0)
  a, b = np.array([0.2, 1.0, -2.0]), np.array([-0.05, 0.3, 0.7])
  ab = refine.from_params(jax.device_get(refine.compose(jnp.asarray(a), jnp.asarray(b))), c)
  want = refine.from_params(a, c) @ refine.from_params(b, c)
  pts = np.array([[0.0, 0.0], [5.0, 9.0]])
  assert ab.close_to(want, pts, 1e-5)
  inv = refine.from_params(jax.device_get(refine.inverse(jnp.asarray(a))), c)
  assert inv.close_to(refine.from_params(a, c).inverse(), pts, 1e-5)


@pytest.mark.slow      # two subprocesses that each compile the pmapped step
def test_refiner_one_and_four_devices_agree():
  # perturbations are keyed by the global example index, BatchNorm is synchronised
  one, four = multidevice.run('pmap_refine.py')
  assert one['devices'] == 1 and four['devices'] == 4
  np.testing.assert_allclose(one['losses'], four['losses'], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(one['param_sum'], four['param_sum'], rtol=1e-5)
  assert len(set(np.round(one['losses'], 4))) > 1


def test_dense_with_caller_rotated_maps():
  # exact rotated sources, as if each rotated image were encoded again: S_a = S o Rot_a^-1
  rng = np.random.default_rng(3)
  truth = synthetic.random_transform(rng, SRC, TGT, np.deg2rad(6.0), margin=1.0)
  angles = np.deg2rad(np.arange(-10, 10.1, 2))
  c = register.map_center(SRC + (1,))
  src, tgt = synthetic.make_pair(SRC, TGT, truth, 32, 2.0, 0.5, seed=3)
  rotated = np.stack([synthetic.make_pair(SRC, TGT, truth @ Rigid2D(-a, center=c), 32, 2.0,
                                          0.5, seed=3)[0] for a in angles])
  res = register.dense(src, tgt, angles=angles, rotated=rotated)
  assert register.mean_grid_error(res.transform, truth, SRC) < 0.25
  with pytest.raises(register.RegistrationError, match='one per angle'):
    register.dense(src, tgt, angles=angles, rotated=rotated[:3])


def test_salient_aligned_training_transforms():
  pairs = [_pair(s) for s in range(3)]
  src = np.stack([p[0] for p in pairs])
  tgt = np.stack([p[1] for p in pairs])
  src[1] = 1 / np.sqrt(src.shape[-1])                  # a pair with nothing to match: left out
  params, kept = refine.salient_aligned(src, tgt)
  assert kept.tolist() == [0, 2]
  for p, i in zip(params, kept):
    est = refine.from_params(p, register.map_center(SRC))
    assert register.mean_grid_error(est, pairs[i][2], SRC) < 0.1
