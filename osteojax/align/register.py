"""Rigid registration of a source feature map onto a target feature map (MRI onto DXA).

The maps are an encoder's output, [h, w, C] (source) and [H, W, C] (target), L2-normalised at
every location, one cell per `stride` image pixels. Each method returns the rigid transform
from source cells to target cells (`rigid.Rigid2D`, map units; `to_pixels` turns it into image
pixels, `Rigid2D.to_mm` into mm):
- `dense`: the source map rotated over a small set of angles (bilinear, about its centre) and
  correlated with the target at every translation (FFT, all angles in one jitted call); the
  strongest response gives angle and translation, refined below the grid by parabola fits
  through the peak and its neighbours in x, y and angle.
- `salient`: Lowe's ratio-test matches of cosine similarity (two best target cells per source
  cell), RANSAC, then a least-median-of-squares fit on the RANSAC inliers.
- the refinement regressor (`osteojax.align.refine`) corrects either from the concatenated,
  almost-aligned maps; `warp` resamples the target onto the source grid for it.
"""
from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from osteojax.align import correlation, rigid
from osteojax.align.rigid import Rigid2D


class RegistrationError(ValueError):
  """A registration could not produce a transform (too few matches, bad maps)."""


def check_maps(src, tgt) -> tuple[np.ndarray, np.ndarray]:
  """Validate a source [h, w, C] and target [H, W, C] map pair; float32 numpy out."""
  src = np.asarray(src, np.float32)
  tgt = np.asarray(tgt, np.float32)
  if src.ndim != 3 or tgt.ndim != 3:
    raise RegistrationError(f'feature maps must be [h, w, C], got shapes {src.shape} and '
                            f'{tgt.shape}')
  if src.shape[-1] != tgt.shape[-1]:
    raise RegistrationError(f'source and target maps have {src.shape[-1]} and {tgt.shape[-1]} '
                            f'channels')
  if min(src.shape[:2]) < 2 or min(tgt.shape[:2]) < 2:
    raise RegistrationError(f'maps need at least 2 x 2 cells, got {src.shape} and {tgt.shape}')
  if not (np.isfinite(src).all() and np.isfinite(tgt).all()):
    raise RegistrationError('feature maps contain NaN or inf')
  return src, tgt


def map_center(shape) -> tuple[float, float]:
  """(x, y) centre of an [h, w, ...] map in cell units."""
  return ((shape[1] - 1) / 2, (shape[0] - 1) / 2)


def to_pixels(t: Rigid2D, stride: int = 8) -> Rigid2D:
  """A map-unit transform in image pixels: cell (j, i) covers pixels [s j, s j + s), centred
  at s j + (s - 1) / 2."""
  return t.change_units(stride, ((stride - 1) / 2, (stride - 1) / 2))


def to_cells(t: Rigid2D, stride: int = 8) -> Rigid2D:
  """An image-pixel transform in map units: the inverse of to_pixels."""
  return t.to_px(stride, ((stride - 1) / 2, (stride - 1) / 2))


# -------------------------------------------------------------------------------- resampling
def _bilinear(m, xy):
  """Sample m [h, w, C] at points xy [..., 2] (x, y); zero outside. -> ([..., C], weight [...]).

  weight is the share of the four neighbours that lie inside the map (1 well inside).
  """
  h, w = m.shape[:2]
  x, y = xy[..., 0], xy[..., 1]
  x0, y0 = jnp.floor(x), jnp.floor(y)
  fx, fy = x - x0, y - y0
  out = 0.0
  wsum = 0.0
  for dy, wy in ((0, 1 - fy), (1, fy)):
    for dx, wx in ((0, 1 - fx), (1, fx)):
      xi, yi = x0 + dx, y0 + dy
      inside = (xi >= 0) & (xi <= w - 1) & (yi >= 0) & (yi <= h - 1)
      wgt = jnp.where(inside, wx * wy, 0.0)
      v = m[jnp.clip(yi, 0, h - 1).astype(jnp.int32), jnp.clip(xi, 0, w - 1).astype(jnp.int32)]
      out = out + wgt[..., None] * v
      wsum = wsum + wgt
  return out, wsum


def _unit(v, eps=1e-6):
  n = jnp.linalg.norm(v, axis=-1, keepdims=True)
  return jnp.where(n > eps, v / jnp.maximum(n, eps), 0.0)


def _grid(h, w):
  y, x = jnp.mgrid[0:h, 0:w]
  return jnp.stack([x, y], -1).astype(jnp.float32)                       # [h, w, 2]


def rotate_map(m, angle, center):
  """The map rotated by `angle` about `center`: out(u) = m(R^-1 (u - c) + c). -> (out, valid).

  Vectors are re-normalised after interpolation; cells whose pre-image falls outside the map
  are zero with valid = 0. m: [h, w, C]; valid: [h, w] in [0, 1].
  """
  c = jnp.asarray(center, jnp.float32)
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  rinv = jnp.array([[cos, sin], [-sin, cos]])
  xy = (_grid(*m.shape[:2]) - c) @ rinv.T + c
  out, wsum = _bilinear(m, xy)
  valid = jnp.where(wsum > 0.5, 1.0, 0.0)
  return _unit(out) * valid[..., None], valid


def warp(tgt, params, center, out_hw, unit: bool = True):
  """The target resampled on the source grid through T: out(u) = tgt(T(u)). -> (out, valid).

  T = params (angle, tx, ty) about `center` (map units, source frame). tgt: [H, W, C].
  unit: re-normalise the interpolated vectors (feature maps); False for images.
  """
  cos, sin = jnp.cos(params[0]), jnp.sin(params[0])
  r = jnp.array([[cos, -sin], [sin, cos]])
  c = jnp.asarray(center, jnp.float32)
  xy = (_grid(*out_hw) - c) @ r.T + c + params[1:3]
  out, wsum = _bilinear(tgt, xy)
  valid = jnp.where(wsum > 0.5, 1.0, 0.0)
  return (_unit(out) if unit else out) * valid[..., None], valid


# -------------------------------------------------------------------------------- dense
def _correlate(tgt, srcs, margin):
  """Correlation of each source map over the target at integer shifts, by FFT.

  tgt: [H, W, C], srcs: [K, h, w, C]; margin (my, mx): how far (cells) the source may stick
  out of the target on each side. -> [K, P - h + 1, Q - w + 1], entry (k, i, j) =
  sum_u <srcs[k](u), tgt(u + t)> for the shift t = (j - mx, i - my) in (x, y), the target
  being zero outside itself. The target sits at offset (my, mx) in an FFT grid (P, Q) of at
  least (H + 2 my, W + 2 mx), so every returned shift is exact (no wrap-around).
  This is a local single-pair FFT correlation; the aligner's batched FFT correlation
  (osteojax/align/correlation.py) can take its place.
  """
  hh, ww = tgt.shape[:2]
  h, w = srcs.shape[1:3]
  my, mx = margin
  size = (correlation.fast_fft_size(max(hh + 2 * my, h)),
          correlation.fast_fft_size(max(ww + 2 * mx, w)))
  t = jnp.pad(jnp.moveaxis(tgt, -1, 0), ((0, 0), (my, 0), (mx, 0)))     # [C, my + H, mx + W]
  ft = jnp.fft.rfft2(t, s=size)                                        # [C, P, Q']
  fs = jnp.fft.rfft2(jnp.moveaxis(srcs, -1, 1), s=size)                # [K, C, P, Q']
  prod = jnp.einsum('cpq,kcpq->kpq', ft, jnp.conj(fs))
  corr = jnp.fft.irfft2(prod, s=size)                                  # [K, P, Q]
  return corr[:, :size[0] - h + 1, :size[1] - w + 1]


def _parabola(sm, s0, sp):
  """Vertex offset in [-0.5, 0.5] of the parabola through (-1, sm), (0, s0), (1, sp)."""
  den = sm - 2 * s0 + sp
  d = jnp.where(den < 0, 0.5 * (sm - sp) / jnp.where(den < 0, den, -1.0), 0.0)
  return jnp.clip(d, -0.5, 0.5)


def smooth_map(m):
  """[1, 2, 1] / 4 binomial smoothing in y and x (edges renormalised), then unit vectors."""
  def along(x, axis):
    ones = jnp.ones(x.shape[:2] + (1,), x.dtype)
    k = lambda v: (jnp.roll(v, 1, axis) * _edge(v, axis, 1) + 2 * v
                   + jnp.roll(v, -1, axis) * _edge(v, axis, -1))
    return k(x) / k(ones)
  return _unit(along(along(m, 0), 1))


def _edge(v, axis, shift):
  """1 where jnp.roll(v, shift, axis) brought in a real neighbour, 0 where it wrapped."""
  n = v.shape[axis]
  idx = jnp.arange(n)
  ok = (idx - shift >= 0) & (idx - shift < n)
  shape = [1] * v.ndim
  shape[axis] = n
  return ok.reshape(shape).astype(v.dtype)


@partial(jax.jit, static_argnames=('margin', 'min_overlap', 'presmooth', 'rotate'))
def _dense(src, tgt, angles, margin, min_overlap: float, presmooth: bool, rotate: bool):
  """All-angle correlation -> (angle index, angle offset, integer shift (x, y), sub-grid
  offset (x, y), peak, best per angle). src: [h, w, C], or [K, h, w, C] maps already rotated
  by each angle when not `rotate`."""
  if presmooth:
    tgt = smooth_map(tgt)
  if rotate:
    c = jnp.array(map_center(src.shape), jnp.float32)
    src = smooth_map(src) if presmooth else src
    rot, valid = jax.vmap(lambda a: rotate_map(src, a, c))(angles)    # [K, h, w, C], [K, h, w]
  else:
    rot = jax.vmap(smooth_map)(src) if presmooth else src
    valid = jnp.ones(src.shape[:3], jnp.float32)
  corr = _correlate(tgt, rot, margin)                                  # [K, P, Q]
  ones = jnp.ones(tgt.shape[:2] + (1,), jnp.float32)
  overlap = _correlate(ones, valid[..., None], margin)                 # valid cells on target
  n_valid = jnp.sum(valid, axis=(1, 2))[:, None, None]
  # per valid source cell: rotation drops corner cells, which would favour small angles
  corr = jnp.where(overlap >= min_overlap * n_valid - 0.5, corr / n_valid, -jnp.inf)
  k, p, q = corr.shape
  peak = jnp.max(corr)
  flat = jnp.min(jnp.where(corr.reshape(-1) >= peak, jnp.arange(k * p * q), k * p * q))
  ka, i, j = flat // (p * q), (flat // q) % p, flat % q
  best = corr[ka]
  at = lambda ii, jj: best[jnp.clip(ii, 0, p - 1), jnp.clip(jj, 0, q - 1)]
  fin = lambda v, inside: jnp.where(inside & jnp.isfinite(v), v, peak)
  dx = _parabola(fin(at(i, j - 1), j > 0), peak, fin(at(i, j + 1), j < q - 1))
  dy = _parabola(fin(at(i - 1, j), i > 0), peak, fin(at(i + 1, j), i < p - 1))
  per_angle = jnp.max(corr, axis=(1, 2))
  da = _parabola(fin(per_angle[jnp.maximum(ka - 1, 0)], ka > 0), peak,
                 fin(per_angle[jnp.minimum(ka + 1, k - 1)], ka < k - 1))
  shift = jnp.stack([j - margin[1], i - margin[0]])
  return ka, da, shift, jnp.stack([dx, dy]), peak, per_angle


@dataclasses.dataclass(frozen=True)
class DenseResult:
  transform: Rigid2D          # source cells -> target cells (about the source centre)
  score: float                # peak correlation per valid rotated source cell
  angle_scores: np.ndarray    # best score per searched angle


DEFAULT_ANGLES = tuple(np.deg2rad(np.arange(-10, 10.1, 2)))


def dense(src, tgt, angles=DEFAULT_ANGLES, margin=4, min_overlap: float = 0.5,
          subgrid: bool = True, presmooth: bool = True, rotated=None) -> DenseResult:
  """Dense registration: correlation over `angles` (radians, evenly spaced, ascending).

  The source is rotated about its centre and correlated with the target at every translation
  that leaves it at most `margin` cells (int, or (y, x)) outside the target on any side
  (None: every translation with any overlap) and puts at least `min_overlap` of its valid
  cells on the target. With `subgrid`, the peak is refined by parabola fits in x, y (cells)
  and angle (fraction of the angle step). rotated: optional [K, h, w, C] source maps, one per
  angle, made by the caller (e.g. encoding the image rotated about the point that is the
  map's centre, as the paper did); they replace the bilinear rotation of `src`.
  """
  src, tgt = check_maps(src, tgt)
  angles = np.asarray(angles, np.float32).ravel()
  if not len(angles):
    raise RegistrationError('dense registration needs at least one angle')
  if len(angles) > 2 and not np.allclose(np.diff(angles), angles[1] - angles[0], atol=1e-6):
    raise RegistrationError('dense registration needs evenly spaced angles')
  if len(angles) > 1 and not angles[1] > angles[0]:
    raise RegistrationError('angles must be ascending')
  if rotated is not None:
    rotated = np.asarray(rotated, np.float32)
    if rotated.shape != (len(angles),) + src.shape:
      want = (len(angles),) + src.shape
      raise RegistrationError(f'rotated maps must be {list(want)} (one per angle), got '
                              f'{list(rotated.shape)}')
    if not np.isfinite(rotated).all():
      raise RegistrationError('rotated maps contain NaN or inf')
  h, w = src.shape[:2]
  if margin is None:
    m = (h - 1, w - 1)
  else:
    m = tuple(int(v) for v in np.broadcast_to(np.asarray(margin), (2,)))
    if min(m) < 0:
      raise RegistrationError(f'margin must be >= 0, got {margin}')
    m = (min(m[0], h - 1), min(m[1], w - 1))
  ka, da, shift, frac, score, per_angle = jax.device_get(_dense(
      jnp.asarray(src if rotated is None else rotated), jnp.asarray(tgt), jnp.asarray(angles),
      m, float(min_overlap), bool(presmooth), rotated is None))
  if not np.isfinite(score):
    raise RegistrationError(f'no translation within the margin puts {min_overlap:.0%} of the '
                            f'source on the target')
  step = float(angles[1] - angles[0]) if len(angles) > 1 else 0.0
  angle = float(angles[ka]) + (float(da) * step if subgrid else 0.0)
  t = np.asarray(shift, np.float64) + (np.asarray(frac, np.float64) if subgrid else 0.0)
  return DenseResult(Rigid2D(angle, tuple(t), map_center(src.shape)), float(score),
                     np.asarray(per_angle))


# -------------------------------------------------------------------------------- salient
@dataclasses.dataclass(frozen=True)
class SalientResult:
  transform: Rigid2D          # source cells -> target cells (about the source centre)
  src_xy: np.ndarray          # [K, 2] matched source cells (ratio test)
  tgt_xy: np.ndarray          # [K, 2] their target positions (sub-cell)
  ransac_inliers: np.ndarray  # [K] bool
  lmeds_inliers: np.ndarray   # [K] bool: of the matches (False where RANSAC rejected)


def salient(src, tgt, ratio: float = 0.9, exclude_radius: float = 1.5, subcell: bool = True,
            ransac_threshold: float = 1.5, iterations: int = 1000, lmeds_iterations: int = 200,
            seed: int = 0, max_angle_deg: float | None = None) -> SalientResult:
  """Salient-point registration: ratio-test matches, RANSAC, least median of squares.

  ratio: Lowe's ratio on unit-vector distances (smaller keeps fewer, surer matches);
  exclude_radius (cells): the second-best target is sought beyond this distance from the best
  (0 = plain top two); subcell: target positions refined by a parabola through the
  similarities around the best cell; ransac_threshold in cells; iterations: the most RANSAC
  hypotheses (it stops earlier at 99.9% confidence); seed makes RANSAC/LMedS reproducible;
  max_angle_deg: RANSAC and LMedS consider only rotations up to this (None: any), the prior the
  dense method has in its angle range.
  """
  src, tgt = check_maps(src, tgt)
  h, w, c = src.shape
  m = rigid.ratio_test_matches(src.reshape(-1, c), tgt.reshape(-1, c), tgt.shape[:2], ratio,
                               exclude_radius, subcell)
  if len(m.src_index) < 3:
    raise RegistrationError(f'only {len(m.src_index)} matches passed the ratio test (ratio '
                            f'{ratio}); at least 3 are needed')
  a = np.stack([m.src_index % w, m.src_index // w], -1).astype(np.float64)
  b = m.tgt_xy
  max_angle = None if max_angle_deg is None else float(np.deg2rad(max_angle_deg))
  try:
    t, inl = rigid.ransac_rigid(a, b, ransac_threshold, iterations, seed, max_angle=max_angle)
  except ValueError as e:
    raise RegistrationError(f'RANSAC: {e}') from None
  if inl.sum() < 2:
    raise RegistrationError(f'RANSAC found {int(inl.sum())} inliers among {len(a)} matches')
  try:
    t, keep = rigid.lmeds_rigid(a[inl], b[inl], lmeds_iterations, seed, max_angle=max_angle)
  except ValueError as e:
    raise RegistrationError(f'LMedS: {e}') from None
  lm = np.zeros(len(a), bool)
  lm[np.nonzero(inl)[0][keep]] = True
  return SalientResult(t.with_center(map_center(src.shape)), a, b, inl, lm)


# -------------------------------------------------------------------------------- baselines
def identity(src_shape=None, tgt_shape=None) -> Rigid2D:
  """No transform: source coordinates are taken as target coordinates."""
  return Rigid2D.identity()


def keypoint_floor(src_points, tgt_points) -> Rigid2D:
  """The best possible rigid transform for the keypoints: their least-squares rigid fit."""
  return rigid.fit_rigid(src_points, tgt_points)


def mean_grid_error(est: Rigid2D, truth: Rigid2D, src_hw) -> float:
  """Mean distance between where `est` and `truth` send every cell of an [h, w] source grid."""
  y, x = np.mgrid[0:src_hw[0], 0:src_hw[1]]
  pts = np.stack([x.ravel(), y.ravel()], -1)
  return float(np.mean(np.linalg.norm(est.apply(pts) - truth.apply(pts), axis=-1)))
