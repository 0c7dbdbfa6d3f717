"""2-D rigid transforms and robust rigid fits of matched points (registration's geometry).

Convention used by every registration method of the project:
- A point is (x, y) = (column, row) in pixels (or in mm, see `Rigid2D.change_units`); a feature
  map cell (j, i) is the point (x=j, y=i) in map units.
- `Rigid2D(angle, translation, center)` maps p -> R(angle) (p - center) + center + translation,
  R(a) = [[cos a, -sin a], [sin a, cos a]]: the form of SimpleITK's Euler2DTransform, so the
  two convert exactly. With the image y axis pointing down, a positive angle turns clockwise on
  screen.
- A registration estimates the transform from *source* points to *target* points (MRI -> DXA):
  target_point = T(source_point).

Fits: `fit_rigid` (least squares, Kabsch/Umeyama without scale, closed form in 2-D),
`ransac_rigid` (seeded 2-point hypotheses, inlier count, local least-squares refits) and
`lmeds_rigid` (least median of squares, Rousseeuw's robust scale, then least squares on the
points it accepts). `ratio_test_matches` is Lowe's second-nearest-neighbour test on feature
vectors.
"""
from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import SimpleITK as sitk


def _rot(angle):
  c, s = np.cos(angle), np.sin(angle)
  return np.array([[c, -s], [s, c]])


@dataclasses.dataclass(frozen=True)
class Rigid2D:
  """p -> R(angle) (p - center) + center + translation. angle in radians; p = (x, y)."""
  angle: float = 0.0
  translation: tuple = (0.0, 0.0)
  center: tuple = (0.0, 0.0)

  def __post_init__(self):
    object.__setattr__(self, 'angle', float(self.angle))
    object.__setattr__(self, 'translation', tuple(float(v) for v in self.translation))
    object.__setattr__(self, 'center', tuple(float(v) for v in self.center))
    if len(self.translation) != 2 or len(self.center) != 2:
      raise ValueError('translation and center must have two entries (x, y)')
    if not np.isfinite([self.angle, *self.translation, *self.center]).all():
      raise ValueError(f'non-finite rigid transform {self}')

  # ---------------------------------------------------------------------------- constructors
  @classmethod
  def identity(cls, center=(0.0, 0.0)) -> Rigid2D:
    return cls(0.0, (0.0, 0.0), center)

  @classmethod
  def from_matrix(cls, rotation, offset, center=(0.0, 0.0)) -> Rigid2D:
    """The transform p -> rotation @ p + offset, stated about `center`."""
    rotation = np.asarray(rotation, np.float64)
    angle = np.arctan2(rotation[1, 0], rotation[0, 0])
    c = np.asarray(center, np.float64)
    t = np.asarray(offset, np.float64) + _rot(angle) @ c - c
    return cls(angle, tuple(t), tuple(c))

  @classmethod
  def from_sitk(cls, transform) -> Rigid2D:
    """From a SimpleITK Euler2DTransform (physical coordinates)."""
    tx = sitk.Euler2DTransform(transform)
    return cls(tx.GetAngle(), tx.GetTranslation(), tx.GetCenter())

  # ---------------------------------------------------------------------------- views
  @property
  def rotation(self) -> np.ndarray:
    return _rot(self.angle)

  @property
  def offset(self) -> np.ndarray:
    """o in p -> R p + o."""
    c = np.asarray(self.center)
    return c + np.asarray(self.translation) - self.rotation @ c

  def homogeneous(self) -> np.ndarray:
    """[3, 3] matrix acting on (x, y, 1) column vectors."""
    m = np.eye(3)
    m[:2, :2], m[:2, 2] = self.rotation, self.offset
    return m

  def params(self) -> tuple[float, float, float]:
    """(angle, tx, ty) about self.center."""
    return (self.angle, *self.translation)

  def to_sitk(self) -> sitk.Euler2DTransform:
    tx = sitk.Euler2DTransform()
    tx.SetCenter(self.center)
    tx.SetAngle(self.angle)
    tx.SetTranslation(self.translation)
    return tx

  # ---------------------------------------------------------------------------- algebra
  def apply(self, points) -> np.ndarray:
    """points: [..., 2] (x, y) -> transformed points [..., 2] float64."""
    p = np.asarray(points, np.float64)
    if p.shape[-1] != 2:
      raise ValueError(f'points must end in an (x, y) axis of 2, got shape {p.shape}')
    return p @ self.rotation.T + self.offset

  def __call__(self, points) -> np.ndarray:
    return self.apply(points)

  def inverse(self) -> Rigid2D:
    """T^-1, stated about the image of self.center (so the centre is a fixed reference)."""
    r_inv = self.rotation.T
    return Rigid2D.from_matrix(r_inv, -r_inv @ self.offset, center=self.apply(self.center))

  def compose(self, other: Rigid2D) -> Rigid2D:
    """self o other: p -> self(other(p)), stated about other.center."""
    r = self.rotation @ other.rotation
    o = self.rotation @ other.offset + self.offset
    return Rigid2D.from_matrix(r, o, center=other.center)

  def __matmul__(self, other: Rigid2D) -> Rigid2D:
    return self.compose(other)

  def with_center(self, center) -> Rigid2D:
    """The same map stated about another centre."""
    return Rigid2D.from_matrix(self.rotation, self.offset, center)

  def change_units(self, scale: float, offset=(0.0, 0.0)) -> Rigid2D:
    """The same motion in coordinates q = scale * p + offset (isotropic scale).

    Map cells -> image pixels for a stride-s encoder: scale=s, offset=(s - 1) / 2 (a cell's
    centre); pixels -> mm: scale=spacing, offset=origin (SimpleITK's index -> physical
    point with an identity direction).
    """
    scale = float(scale)
    if not scale > 0:
      raise ValueError(f'scale must be positive, got {scale}')
    b = np.broadcast_to(np.asarray(offset, np.float64), (2,))
    return Rigid2D(self.angle, tuple(scale * np.asarray(self.translation)),
                   tuple(scale * np.asarray(self.center) + b))

  def to_mm(self, spacing, origin=(0.0, 0.0)) -> Rigid2D:
    """Pixel -> physical coordinates; a rigid motion stays rigid only for square pixels."""
    return self.change_units(_isotropic(spacing), origin)

  def to_px(self, spacing, origin=(0.0, 0.0)) -> Rigid2D:
    """Physical -> pixel coordinates (inverse of to_mm)."""
    s = _isotropic(spacing)
    return self.change_units(1.0 / s, -np.asarray(origin, np.float64) / s)

  def close_to(self, other: Rigid2D, points, tol: float) -> bool:
    """Whether the two maps move every one of `points` [N, 2] to within tol of each other."""
    return bool(np.max(np.linalg.norm(self.apply(points) - other.apply(points), axis=-1)) <= tol)


def _isotropic(spacing) -> float:
  s = np.broadcast_to(np.asarray(spacing, np.float64), (2,))
  if not (s > 0).all() or abs(s[0] - s[1]) > 1e-6 * s.max():
    raise ValueError(f'rigid transforms between pixel and mm grids need square positive pixels, '
                     f'got spacing {tuple(s)}')
  return float(s[0])


# ------------------------------------------------------------------------------------------ fits
def _check_pairs(src, dst, minimum):
  src = np.asarray(src, np.float64)
  dst = np.asarray(dst, np.float64)
  if src.ndim != 2 or src.shape[1] != 2 or src.shape != dst.shape:
    raise ValueError(f'point pairs must be two [N, 2] arrays of equal shape, got {src.shape} '
                     f'and {dst.shape}')
  if len(src) < minimum:
    raise ValueError(f'a rigid fit needs at least {minimum} point pairs, got {len(src)}')
  if not (np.isfinite(src).all() and np.isfinite(dst).all()):
    raise ValueError('point pairs contain NaN or inf')
  return src, dst


def fit_rigid(src, dst, weights=None) -> Rigid2D:
  """Least-squares rotation + translation (no scale) with dst ~ T(src). src, dst: [N, 2].

  Closed form of Kabsch/Umeyama in 2-D: with centred points a_i, b_i the optimal angle is
  atan2(sum w (a x b), sum w (a . b)). Stated about the weighted centroid of src.
  """
  src, dst = _check_pairs(src, dst, 2)
  w = np.ones(len(src)) if weights is None else np.asarray(weights, np.float64)
  if w.shape != (len(src),) or (w < 0).any() or w.sum() <= 0:
    raise ValueError('weights must be [N] non-negative with a positive sum')
  w = w / w.sum()
  cs, cd = w @ src, w @ dst
  a, b = src - cs, dst - cd
  angle = np.arctan2(np.sum(w * (a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0])),
                     np.sum(w * (a[:, 0] * b[:, 0] + a[:, 1] * b[:, 1])))
  return Rigid2D(angle, tuple(cd - cs), tuple(cs))


def residuals(t: Rigid2D, src, dst) -> np.ndarray:
  """|T(src) - dst| per pair: [N]."""
  return np.linalg.norm(t.apply(src) - np.asarray(dst, np.float64), axis=-1)


def _hypotheses(src, dst, iterations, seed, min_separation):
  """Rigid maps through `iterations` random distinct pairs: rotations [K, 2, 2], offsets [K, 2]."""
  rng = np.random.default_rng(seed)
  n = len(src)
  i = rng.integers(0, n, iterations)
  j = rng.integers(0, n - 1, iterations)
  j = j + (j >= i)                                       # a second, different index
  ds, dd = src[j] - src[i], dst[j] - dst[i]
  ok = (np.linalg.norm(ds, axis=1) > min_separation) & (np.linalg.norm(dd, axis=1) > min_separation)
  ang = np.arctan2(dd[:, 1], dd[:, 0]) - np.arctan2(ds[:, 1], ds[:, 0])
  c, s = np.cos(ang), np.sin(ang)
  rot = np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)
  mid_s, mid_d = (src[i] + src[j]) / 2, (dst[i] + dst[j]) / 2
  off = mid_d - np.einsum('kab,kb->ka', rot, mid_s)
  return rot[ok], off[ok]


def _hyp_residuals(rot, off, src, dst):
  """Squared residuals of every hypothesis at every pair: [K, N]."""
  pred = np.einsum('kab,nb->kna', rot, src) + off[:, None, :]
  return np.sum((pred - dst[None]) ** 2, axis=-1)


def ransac_rigid(src, dst, threshold: float, iterations: int = 500, seed: int = 0,
                 refits: int = 3, min_separation: float = 1e-6) -> tuple[Rigid2D, np.ndarray]:
  """RANSAC rigid fit: (transform, inlier mask [N] bool).

  Hypotheses are exact rigid maps through two random distinct pairs (numpy Generator seeded
  by `seed`: the same inputs give the same result). The best hypothesis has the most pairs
  with residual <= threshold (ties: smaller truncated squared error); it is then refitted by
  least squares on its inliers, `refits` times, re-selecting the inliers each time.
  """
  src, dst = _check_pairs(src, dst, 2)
  if not threshold > 0:
    raise ValueError(f'threshold must be positive, got {threshold}')
  rot, off = _hypotheses(src, dst, iterations, seed, min_separation)
  if not len(rot):
    raise ValueError('all sampled point pairs coincide: no rigid hypothesis')
  r2 = _hyp_residuals(rot, off, src, dst)
  thr2 = threshold ** 2
  count = np.sum(r2 <= thr2, axis=1)
  cost = np.sum(np.minimum(r2, thr2), axis=1)
  best = np.lexsort((cost, -count))[0]
  t = Rigid2D.from_matrix(rot[best], off[best])
  inl = r2[best] <= thr2
  for _ in range(refits):
    if inl.sum() < 2:
      break
    t_new = fit_rigid(src[inl], dst[inl])
    inl_new = residuals(t_new, src, dst) <= threshold
    if inl_new.sum() < inl.sum():
      break
    t, inl = t_new, inl_new
  return t, inl


def lmeds_rigid(src, dst, iterations: int = 500, seed: int = 0, reweights: int = 5,
                min_separation: float = 1e-6) -> tuple[Rigid2D, np.ndarray]:
  """Least-median-of-squares rigid fit: (transform, accepted mask [N] bool).

  The 2-pair hypothesis with the smallest h-th smallest squared residual wins, h = n // 2 + 1
  (Rousseeuw's LMS order statistic for 2 parameters per point; tolerates just under 50%
  outliers). Rousseeuw's robust scale s = 1.4826 (1 + 5 / (n - 2)) sqrt(that residual) accepts
  pairs with residual <= 2.5 s; then reweighted least squares: fit on the accepted pairs,
  re-estimate s = 1.4826 sqrt(median squared residual of the accepted) and re-accept, until
  the accepted set stops changing (at most `reweights` times). At 50% outliers the first scale
  is set by the nearest outliers; the reweighting brings it down to that of the inliers.
  """
  src, dst = _check_pairs(src, dst, 2)
  rot, off = _hypotheses(src, dst, iterations, seed, min_separation)
  if not len(rot):
    raise ValueError('all sampled point pairs coincide: no rigid hypothesis')
  r2 = _hyp_residuals(rot, off, src, dst)
  n = len(src)
  h = min(n // 2 + 1, n) - 1
  med = np.partition(r2, h, axis=1)[:, h]
  best = int(np.argmin(med))
  scale = 1.4826 * (1 + 5 / max(n - 2, 1)) * np.sqrt(med[best])
  t = Rigid2D.from_matrix(rot[best], off[best])
  keep = r2[best] <= (2.5 * scale) ** 2 + 1e-12
  for _ in range(reweights):
    if keep.sum() < 2:
      break
    t = fit_rigid(src[keep], dst[keep])
    res2 = residuals(t, src, dst) ** 2
    scale = 1.4826 * np.sqrt(np.median(res2[keep]))
    new = res2 <= (2.5 * scale) ** 2 + 1e-12
    if new.sum() < 2 or (new == keep).all():
      break
    keep = new
  if keep.sum() >= 2:
    t = fit_rigid(src[keep], dst[keep])
  return t, keep


# ------------------------------------------------------------------------------------ matching
@partial(jax.jit, static_argnames=('exclude',))
def _two_best(src, tgt, tgt_xy, radius, exclude: bool):
  """Best and second-best target per source vector by cosine similarity.

  src: [N, C], tgt: [M, C], tgt_xy: [M, 2]. With `exclude`, the second best is sought only
  among targets farther than `radius` from the best one (neighbouring cells of a smooth map
  are near copies of the best and are not a competing match).
  """
  norm = lambda v: v / jnp.maximum(jnp.linalg.norm(v, axis=-1, keepdims=True), 1e-12)
  sim = norm(src) @ norm(tgt).T                                        # [N, M]
  best = jnp.argmax(sim, axis=1)
  s1 = jnp.take_along_axis(sim, best[:, None], 1)[:, 0]
  if exclude:
    d2 = jnp.sum((tgt_xy[None, :, :] - tgt_xy[best][:, None, :]) ** 2, -1)
    masked = jnp.where(d2 <= radius ** 2, -jnp.inf, sim)
  else:
    masked = sim.at[jnp.arange(sim.shape[0]), best].set(-jnp.inf)
  s2 = jnp.max(masked, axis=1)
  return best, s1, s2


def ratio_test_matches(src_feats, tgt_feats, ratio: float = 0.8, tgt_xy=None,
                       exclude_radius: float = 0.0):
  """Lowe's ratio test: (src_index [K], tgt_index [K], similarity [K]) of the kept matches.

  src_feats: [N, C], tgt_feats: [M, C] (normalised here; cosine similarity). For each source
  vector take its two most similar targets t1, t2 and keep (s, t1) when the best is clearly
  better than the second: in Lowe's distance form d(s, t1) < ratio * d(s, t2), with
  d = sqrt(2 - 2 cos) the distance of unit vectors. (The paper's appendix prints the test as
  "keep if tau * sim(s, t1) < sim(s, t2)", which keeps the *ambiguous* matches, the opposite of
  Lowe's test that its text cites; we implement Lowe's test.)
  exclude_radius > 0 (needs tgt_xy [M, 2]) seeks the second best only beyond that distance
  from the best (0: the plain top two, as the paper).
  """
  src = jnp.asarray(src_feats, jnp.float32)
  tgt = jnp.asarray(tgt_feats, jnp.float32)
  if src.ndim != 2 or tgt.ndim != 2 or src.shape[1] != tgt.shape[1]:
    raise ValueError(f'features must be [N, C] and [M, C] with one C, got {src.shape}, '
                     f'{tgt.shape}')
  if tgt.shape[0] < 2:
    raise ValueError('the ratio test needs at least two target vectors')
  if not 0 < ratio <= 1:
    raise ValueError(f'ratio must be in (0, 1], got {ratio}')
  exclude = exclude_radius > 0
  if exclude and tgt_xy is None:
    raise ValueError('exclude_radius needs the target positions tgt_xy')
  xy = jnp.zeros((tgt.shape[0], 2), jnp.float32) if tgt_xy is None else jnp.asarray(tgt_xy,
                                                                                    jnp.float32)
  best, s1, s2 = jax.device_get(_two_best(src, tgt, xy, jnp.float32(exclude_radius), exclude))
  d1 = np.sqrt(np.maximum(2 - 2 * s1, 0))
  d2 = np.sqrt(np.maximum(2 - 2 * s2, 0))
  keep = np.isfinite(s2) & (d1 < ratio * d2)
  idx = np.nonzero(keep)[0]
  return idx, np.asarray(best)[idx], np.asarray(s1)[idx]
