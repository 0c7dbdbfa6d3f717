"""2-D rigid transforms and fits against hand-made transforms with known truth."""
import numpy as np
import pytest

from osteojax.align import rigid
from osteojax.align.rigid import Rigid2D


def _points(n, seed=0, scale=100.0):
  return np.random.default_rng(seed).uniform(0, scale, (n, 2))


def test_apply_by_hand():
  t = Rigid2D(np.pi / 2, (1.0, 2.0), (10.0, 0.0))
  # (11, 0) - c = (1, 0) -> rotated (0, 1) -> + c + t = (11, 3)
  np.testing.assert_allclose(t.apply([[11.0, 0.0]]), [[11.0, 3.0]], atol=1e-12)
  np.testing.assert_allclose(t.apply([10.0, 0.0]), [11.0, 2.0], atol=1e-12)   # centre moves by t
  np.testing.assert_allclose(t.homogeneous() @ [11.0, 0.0, 1.0], [11.0, 3.0, 1.0], atol=1e-12)


def test_inverse_compose_center_units():
  a = Rigid2D(0.3, (5.0, -2.0), (40.0, 60.0))
  b = Rigid2D(-0.1, (1.0, 7.0), (3.0, 4.0))
  p = _points(20)
  np.testing.assert_allclose(a.inverse().apply(a.apply(p)), p, atol=1e-9)
  np.testing.assert_allclose(a.compose(b).apply(p), a.apply(b.apply(p)), atol=1e-9)
  np.testing.assert_allclose((a @ b).apply(p), a.apply(b.apply(p)), atol=1e-9)
  np.testing.assert_allclose(a.with_center((0.0, 0.0)).apply(p), a.apply(p), atol=1e-9)
  # the same motion in mm: q = 2.2 p + origin
  origin = np.array([-100.0, 30.0])
  m = a.to_mm(2.2, origin)
  np.testing.assert_allclose(m.apply(2.2 * p + origin), 2.2 * a.apply(p) + origin, atol=1e-9)
  np.testing.assert_allclose(m.to_px(2.2, origin).apply(p), a.apply(p), atol=1e-9)
  with pytest.raises(ValueError, match='square'):
    a.to_mm((2.2, 3.0))


def test_sitk_round_trip_same_map():
  a = Rigid2D(0.2, (3.0, -4.0), (50.0, 20.0))
  tx = a.to_sitk()
  p = _points(5)
  got = np.array([tx.TransformPoint(tuple(q)) for q in p])
  np.testing.assert_allclose(got, a.apply(p), atol=1e-9)
  b = Rigid2D.from_sitk(tx)
  np.testing.assert_allclose(b.apply(p), a.apply(p), atol=1e-9)
  inv = np.array([tx.GetInverse().TransformPoint(tuple(q)) for q in p])
  np.testing.assert_allclose(inv, a.inverse().apply(p), atol=1e-9)


def test_least_squares_fit_recovers_known_transform():
  truth = Rigid2D(-0.4, (12.0, -7.0), (30.0, 30.0))
  src = _points(30, 1)
  est = rigid.fit_rigid(src, truth.apply(src))
  assert est.close_to(truth, src, 1e-9)
  # with noise: the fit beats the truth on its own objective (it is the least-squares optimum)
  noisy = truth.apply(src) + np.random.default_rng(2).normal(0, 1.0, src.shape)
  est = rigid.fit_rigid(src, noisy)
  assert np.sum(rigid.residuals(est, src, noisy) ** 2) <= np.sum(
      rigid.residuals(truth, src, noisy) ** 2)
  assert est.close_to(truth, src, 1.5)
  with pytest.raises(ValueError, match='at least 2'):
    rigid.fit_rigid(src[:1], src[:1])


def _with_outliers(truth, n=200, frac=0.5, noise=0.3, seed=0):
  rng = np.random.default_rng(seed)
  src = rng.uniform(0, 100, (n, 2))
  dst = truth.apply(src) + rng.normal(0, noise, src.shape)
  bad = rng.permutation(n)[:int(frac * n)]
  dst[bad] = rng.uniform(0, 100, (len(bad), 2))           # wrong matches anywhere
  good = np.ones(n, bool)
  good[bad] = False
  return src, dst, good


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_ransac_and_lmeds_survive_half_outliers(seed):
  truth = Rigid2D(0.15, (-8.0, 5.0), (50.0, 50.0))
  src, dst, good = _with_outliers(truth, seed=seed)
  grid = _points(50, 9)
  plain = rigid.fit_rigid(src, dst)
  assert not plain.close_to(truth, grid, 2.0)               # least squares alone is pulled off
  t, inl = rigid.ransac_rigid(src, dst, threshold=1.5, seed=seed)
  assert t.close_to(truth, grid, 0.5)
  assert inl[good].mean() > 0.95 and inl[~good].mean() < 0.05
  t2, keep = rigid.lmeds_rigid(src, dst, seed=seed)
  assert t2.close_to(truth, grid, 0.5)
  assert keep[good].mean() > 0.9 and keep[~good].mean() < 0.05
  # seeded: the same call gives the same answer
  t3, _ = rigid.ransac_rigid(src, dst, threshold=1.5, seed=seed)
  assert t3 == t


def test_a_rotation_prior_keeps_the_plausible_consensus():
  """A larger consensus of wrong matches turned by 180 degrees (e.g. a symmetric body read
  upside down) wins plain RANSAC; with max_angle 10 degrees the true 3-degree
  transform wins, and only hypotheses within the bound are considered."""
  rng = np.random.default_rng(0)
  truth = Rigid2D(np.deg2rad(3.0), (4.0, -2.0), (50.0, 50.0))
  flip = Rigid2D(np.pi, (1.0, 1.0), (50.0, 50.0))
  a = rng.uniform(0, 100, (20, 2))
  b = rng.uniform(0, 100, (30, 2))
  src = np.concatenate([a, b])
  dst = np.concatenate([truth(a), flip(b)]) + rng.normal(0, 0.1, (50, 2))
  grid = _points(50, 9)
  t, _ = rigid.ransac_rigid(src, dst, threshold=1.5)
  assert t.close_to(flip, grid, 0.5)
  t, inl = rigid.ransac_rigid(src, dst, threshold=1.5, max_angle=np.deg2rad(10))
  assert t.close_to(truth, grid, 0.5) and inl[:20].all() and not inl[20:].any()
  # LMedS (run on RANSAC's inliers in salient) honours the same bound
  t, _ = rigid.lmeds_rigid(src[:20], dst[:20], max_angle=np.deg2rad(10))
  assert t.close_to(truth, grid, 0.5)
  for fit in (lambda: rigid.ransac_rigid(b, flip(b), threshold=1.5, max_angle=np.deg2rad(10)),
              lambda: rigid.lmeds_rigid(b, flip(b), max_angle=np.deg2rad(10))):
    with pytest.raises(ValueError, match='max_angle'):
      fit()


def test_ratio_test_is_lowes():
  rng = np.random.default_rng(0)
  tgt = rng.normal(size=(6, 8))
  tgt /= np.linalg.norm(tgt, axis=1, keepdims=True)
  near = tgt[2] + 0.05 * rng.normal(size=8)                 # clearly closest to target 2
  amb = tgt[0] + tgt[1]                                      # halfway between targets 0 and 1
  m = rigid.ratio_test_matches(np.stack([near, amb]), tgt, (2, 3), ratio=0.8)
  assert m.src_index.tolist() == [0] and m.tgt_index.tolist() == [2]
  assert m.tgt_xy.tolist() == [[2.0, 0.0]]                   # cell 2 of a 2 x 3 grid
  # by hand: distances of unit vectors for the kept match
  n = near / np.linalg.norm(near)
  s = tgt @ n
  d = np.sqrt(2 - 2 * np.sort(s)[::-1][:2])
  assert d[0] < 0.8 * d[1] and np.isclose(m.similarity[0], s.max(), atol=1e-5)
  # the paper's printed inequality (tau * s1 < s2) would keep the ambiguous one instead
  a = amb / np.linalg.norm(amb)
  sa = np.sort(tgt @ a)[::-1]
  assert 0.8 * sa[0] < sa[1] and not 0.8 * s.max() < np.sort(s)[-2]
  # two adjacent copies of the best are rivals for the plain test, not beyond a radius
  tgt2 = np.concatenate([tgt[:3], tgt[2:3], tgt[3:]])        # cells 2 and 3 are equal
  assert len(rigid.ratio_test_matches(near[None], tgt2, (1, 7), 0.8).src_index) == 0
  kept = rigid.ratio_test_matches(near[None], tgt2, (1, 7), 0.8, exclude_radius=1.0)
  assert kept.tgt_index.tolist() in ([2], [3])


def test_ratio_test_subcell_position():
  # target cell x holds the unit vector at angle 0.5 x: cos similarity = cos(0.5 (x - x0))
  x = np.arange(9)
  tgt = np.stack([np.cos(0.5 * x), np.sin(0.5 * x)], -1)
  x0 = 4.3
  src = np.array([[np.cos(0.5 * x0), np.sin(0.5 * x0)]])
  m = rigid.ratio_test_matches(src, tgt, (1, 9), 0.9, exclude_radius=1.5, subcell=True)
  assert m.tgt_index.tolist() == [4]
  assert abs(m.tgt_xy[0, 0] - x0) < 0.02 and m.tgt_xy[0, 1] == 0.0


def test_ransac_trials():
  """The adaptive stop: log(1 - p) / log(1 - w^2) hypotheses, by hand; none needed at w = 1,
  never stop while no hypothesis has an inlier (w = 0: an earlier version divided by log(1) and
  stopped after the first chunk)."""
  assert rigid.ransac_trials(0.5, 0.999) == pytest.approx(np.log(0.001) / np.log(0.75))
  assert rigid.ransac_trials(1.0, 0.999) == 0
  assert rigid.ransac_trials(0.0, 0.999) == float('inf')
  assert rigid.ransac_trials(0.1, 0.999) > rigid.ransac_trials(0.2, 0.999)
