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


def _hypotheses(src, dst, iterations, seed, min_separation, max_angle=None):
  """Rigid maps through `iterations` random distinct pairs: rotations [K, 2, 2], offsets [K, 2].
  max_angle (radians): hypotheses rotating by more are dropped (a prior on the pose)."""
  rng = np.random.default_rng(seed)
  n = len(src)
  i = rng.integers(0, n, iterations)
  j = rng.integers(0, n - 1, iterations)
  j = j + (j >= i)                                       # a second, different index
  ds, dd = src[j] - src[i], dst[j] - dst[i]
  ok = (np.linalg.norm(ds, axis=1) > min_separation) & (np.linalg.norm(dd, axis=1) > min_separation)
  ang = np.arctan2(dd[:, 1], dd[:, 0]) - np.arctan2(ds[:, 1], ds[:, 0])
  if max_angle is not None:
    ok &= np.abs(np.angle(np.exp(1j * ang))) <= max_angle
  c, s = np.cos(ang), np.sin(ang)
  rot = np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)
  mid_s, mid_d = (src[i] + src[j]) / 2, (dst[i] + dst[j]) / 2
  off = mid_d - np.einsum('kab,kb->ka', rot, mid_s)
  return rot[ok], off[ok]


def _hyp_residuals(rot, off, src, dst):
  """Squared residuals of every hypothesis at every pair: [K, N]."""
  x, y = src[:, 0], src[:, 1]
  px = rot[:, 0, 0, None] * x + rot[:, 0, 1, None] * y + off[:, 0, None] - dst[:, 0]
  py = rot[:, 1, 0, None] * x + rot[:, 1, 1, None] * y + off[:, 1, None] - dst[:, 1]
  return px * px + py * py


def ransac_trials(inlier_fraction: float, confidence: float) -> float:
  """Hypotheses (two pairs each) needed to draw one all-inlier pair with probability
  `confidence` when a fraction w of the pairs are inliers: log(1 - confidence) / log(1 - w^2).
  0 when w = 1; infinite when w = 0 (no hypothesis has an inlier yet: keep sampling)."""
  w = float(inlier_fraction)
  if w >= 1:
    return 0.0
  if w <= 0:
    return float('inf')
  return float(np.log(1 - confidence) / np.log(max(1 - w * w, 1e-12)))


def ransac_rigid(src, dst, threshold: float, iterations: int = 1000, seed: int = 0,
                 confidence: float = 0.999, refits: int = 3, chunk: int = 64,
                 min_separation: float = 1e-6,
                 max_angle: float | None = None) -> tuple[Rigid2D, np.ndarray]:
  """RANSAC rigid fit: (transform, inlier mask [N] bool).

  Hypotheses are exact rigid maps through two random distinct pairs, all drawn up front from a
  numpy Generator seeded by `seed` (the same inputs give the same result) and scored in chunks;
  sampling stops once enough were scored to have drawn one all-inlier pair with probability
  `confidence` at the best inlier fraction so far (at most `iterations`). The best hypothesis
  has the most pairs with residual <= threshold (ties: smaller truncated squared error); it is
  then refitted by least squares on its inliers, `refits` times, re-selecting the inliers.
  max_angle (radians, None: any): only hypotheses rotating by at most this much are scored.
  """
  src, dst = _check_pairs(src, dst, 2)
  if not threshold > 0:
    raise ValueError(f'threshold must be positive, got {threshold}')
  rot, off = _hypotheses(src, dst, iterations, seed, min_separation, max_angle)
  if not len(rot):
    raise ValueError('no rigid hypothesis: all sampled point pairs coincide'
                     + ('' if max_angle is None else ' or rotate beyond max_angle'))
  thr2 = threshold ** 2
  best_key, best = None, None
  done = 0
  while done < len(rot):
    sl = slice(done, done + chunk)
    r2 = _hyp_residuals(rot[sl], off[sl], src, dst)
    count = np.sum(r2 <= thr2, axis=1)
    cost = np.sum(np.minimum(r2, thr2), axis=1)
    k = np.lexsort((cost, -count))[0]
    if best_key is None or (-count[k], cost[k]) < best_key:
      best_key, best = (-count[k], cost[k]), done + k
    done += len(r2)
    if done >= ransac_trials(-best_key[0] / len(src), confidence):
      break
  t = Rigid2D.from_matrix(rot[best], off[best])
  inl = residuals(t, src, dst) <= threshold
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
                min_separation: float = 1e-6,
                max_angle: float | None = None) -> tuple[Rigid2D, np.ndarray]:
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
  rot, off = _hypotheses(src, dst, iterations, seed, min_separation, max_angle)
  if not len(rot):
    raise ValueError('no rigid hypothesis: all sampled point pairs coincide'
                     + ('' if max_angle is None else ' or rotate beyond max_angle'))
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
def _parabola_np(sm, s0, sp):
  """Vertex offset in [-0.5, 0.5] of the parabola through (-1, sm), (0, s0), (1, sp)."""
  den = sm - 2 * s0 + sp
  safe = np.where(den < 0, den, -1.0)
  return np.clip(np.where(den < 0, 0.5 * (sm - sp) / safe, 0.0), -0.5, 0.5)


@partial(jax.jit, static_argnames=('hw', 'exclude'))
def _two_best(src, tgt, radius, hw, exclude: bool):
  """Best and second-best target per source vector by cosine similarity.

  src: [N, C], tgt: [M, C] with M = H * W cells of an [H, W] grid (row-major).
  -> best index [N], s1 [N], s2 [N], neighbour similarities [N, 4] (x-1, x+1, y-1, y+1; -inf
  off the grid). With `exclude`, the second best is sought only among cells farther than
  `radius` from the best one (neighbouring cells of a smooth map are near copies of the best,
  not a rival match). Argmax is taken as the first index reaching the max (one fused pass).
  """
  hh, ww = hw
  norm = lambda v: v / jnp.maximum(jnp.linalg.norm(v, axis=-1, keepdims=True), 1e-12)
  sim = norm(src) @ norm(tgt).T                                        # [N, M]
  m = sim.shape[1]
  s1 = jnp.max(sim, axis=1)
  best = jnp.min(jnp.where(sim >= s1[:, None], jnp.arange(m), m), axis=1)
  ty = (jnp.arange(m) // ww).astype(jnp.float32)
  tx = (jnp.arange(m) % ww).astype(jnp.float32)
  by, bx = ty[best], tx[best]
  if exclude:
    d2 = (ty[None] - by[:, None]) ** 2 + (tx[None] - bx[:, None]) ** 2
    s2 = jnp.max(jnp.where(d2 <= radius ** 2, -jnp.inf, sim), axis=1)
  else:
    s2 = jnp.max(jnp.where(jnp.arange(m)[None] == best[:, None], -jnp.inf, sim), axis=1)
  rows = jnp.arange(sim.shape[0])
  by, bx = best // ww, best % ww

  def at(dy, dx):
    y, x = by + dy, bx + dx
    ok = (y >= 0) & (y < hh) & (x >= 0) & (x < ww)
    return jnp.where(ok, sim[rows, jnp.clip(y, 0, hh - 1) * ww + jnp.clip(x, 0, ww - 1)],
                     -jnp.inf)

  nb = jnp.stack([at(0, -1), at(0, 1), at(-1, 0), at(1, 0)], -1)
  return best, s1, s2, nb


@dataclasses.dataclass(frozen=True)
class Matches:
  src_index: np.ndarray       # [K] int: row-major index of the source vector
  tgt_index: np.ndarray       # [K] int: its best target (row-major index in the [H, W] grid)
  tgt_xy: np.ndarray          # [K, 2] float: the target cell's (x, y), sub-cell if asked
  similarity: np.ndarray      # [K] cosine similarity of the pair


def ratio_test_matches(src_feats, tgt_feats, tgt_hw, ratio: float = 0.8,
                       exclude_radius: float = 0.0, subcell: bool = False) -> Matches:
  """Lowe's ratio test on feature vectors: the matches that pass it.

  src_feats: [N, C]; tgt_feats: [H * W, C], the cells of an [H, W] target grid in row-major
  order (tgt_hw = (H, W)); vectors are normalised here (cosine similarity). For each source
  vector take its two most similar targets t1, t2 and keep (s, t1) when the best is clearly
  better than the second: in Lowe's distance form d(s, t1) < ratio * d(s, t2), with
  d = sqrt(2 - 2 cos) the distance of unit vectors. (The paper's appendix prints the test as
  "keep if tau * sim(s, t1) < sim(s, t2)", which keeps the *ambiguous* matches, the opposite of
  Lowe's test that its text cites; we implement Lowe's test.)
  exclude_radius > 0 (cells) seeks the second best only beyond that distance from the best
  (0: the plain top two, as the paper). subcell: the kept target position is moved by a
  parabola fit of the similarity through the best cell and its neighbours, in x and in y.
  """
  src = jnp.asarray(src_feats, jnp.float32)
  tgt = jnp.asarray(tgt_feats, jnp.float32)
  hw = tuple(int(v) for v in tgt_hw)
  if src.ndim != 2 or tgt.ndim != 2 or src.shape[1] != tgt.shape[1]:
    raise ValueError(f'features must be [N, C] and [M, C] with one C, got {src.shape}, '
                     f'{tgt.shape}')
  if len(hw) != 2 or hw[0] * hw[1] != tgt.shape[0]:
    raise ValueError(f'target grid {tgt_hw} does not hold {tgt.shape[0]} vectors')
  if tgt.shape[0] < 2:
    raise ValueError('the ratio test needs at least two target vectors')
  if not 0 < ratio <= 1:
    raise ValueError(f'ratio must be in (0, 1], got {ratio}')
  best, s1, s2, nb = jax.device_get(
      _two_best(src, tgt, jnp.float32(exclude_radius), hw, exclude_radius > 0))
  d1 = np.sqrt(np.maximum(2 - 2 * s1, 0))
  d2 = np.sqrt(np.maximum(2 - 2 * s2, 0))
  keep = np.isfinite(s2) & (d1 < ratio * d2)
  idx = np.nonzero(keep)[0]
  b = np.asarray(best)[idx]
  xy = np.stack([b % hw[1], b // hw[1]], -1).astype(np.float64)
  if subcell and len(idx):
    n, s0 = nb[idx].astype(np.float64), s1[idx].astype(np.float64)
    fill = lambda v: np.where(np.isfinite(v), v, s0)
    xy[:, 0] += _parabola_np(fill(n[:, 0]), s0, fill(n[:, 1]))
    xy[:, 1] += _parabola_np(fill(n[:, 2]), s0, fill(n[:, 3]))
  return Matches(idx, b, xy, np.asarray(s1)[idx])
