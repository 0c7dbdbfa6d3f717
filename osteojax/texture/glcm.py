"""Voxel-wise GLCM maps (pyradiomics `voxelBased=True` semantics) without per-voxel matrices.

The four features computed here are linear in the normalised co-occurrence matrix p_a of
each angle a:

  Autocorrelation   = sum p(i,j) i j          Contrast          = sum p(i,j) (i-j)^2
  JointAverage      = sum p(i,j) i            DifferenceAverage = sum p(i,j) |i-j|

so with P_a the raw pair counts of a kernel, each per-angle value is a ratio
S_a / n_a of two *kernel sums of per-pair integers* (n_a = number of pairs, S_a = sum over
those pairs of i*j, i+j, (i-j)^2 or |i-j|).  The kernel sums are accumulated exactly in
int32 inside one fused XLA loop per angle (no per-voxel matrix, no float accumulation), and
converted to float32 only for the final ratios and the mean over angles.  See
the parity contract in docs/texture.md for the exact pyradiomics behaviour reproduced here (cropping, bin
edges, kernel clipping, empty angles, NaN rules, weighting).

Shapes: volumes are [D, H, W] (or [H, W] for 2-D images); spacing is per array axis, in the
same order as the array axes (i.e. SimpleITK's GetSpacing()[::-1]).
"""

from __future__ import annotations

import functools
import itertools
from typing import NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from osteojax.texture.settings import GLCMSettings

FEATURES = ('Autocorrelation', 'JointAverage', 'Contrast', 'DifferenceAverage')

Angle = Tuple[int, ...]


class GLCMMaps(NamedTuple):
  """The four voxel-wise maps, each [*S] float32 (a pytree: jit/vmap return it as is).

  A tuple rather than one stacked [4, *S] array on purpose: XLA would fuse a stack of the
  four maps into one loop that evaluates every kernel sum once per channel (4x the work).
  Use `np.stack(maps)` on the host for a [4, *S] array in FEATURES order.
  """
  Autocorrelation: jax.Array
  JointAverage: jax.Array
  Contrast: jax.Array
  DifferenceAverage: jax.Array


def glcm_angles(shape: Sequence[int], force2D: bool = False,
                force2Ddimension: int = 0) -> Tuple[Angle, ...]:
  """The distance-1 angles pyradiomics uses for an image of `shape` (cmatrices.c order).

  13 in 3-D, 4 in 2-D (or with force2D); an axis of size 1 contributes no offset.  Of each
  pair (a, -a) only the first generated one is kept, i.e. the one whose first non-zero
  offset is +1.  pyradiomics counts the pair (x, x + a) with x as the GLCM row.
  """
  nd = len(shape)
  skip = force2Ddimension if force2D else -1
  n_valid = [1 if (d == skip or shape[d] < 2) else 3 for d in range(nd)]
  n_angles = (int(np.prod(n_valid)) - 1) // 2
  angles = []
  idx = 0
  while len(angles) < n_angles:
    offs = []
    for d in range(nd):
      off = 1 - (idx // 3 ** (nd - 1 - d)) % 3
      if (d == skip and off != 0) or off >= shape[d] or off <= -shape[d]:
        offs = None
        break
      offs.append(off)
    idx += 1
    if offs is not None and max(abs(o) for o in offs) == 1:
      angles.append(tuple(offs))
  return tuple(angles)


def kernel_crop_box(roi: jax.Array, radius: int) -> jax.Array:
  """pyradiomics' crop region: ROI bounding box padded by `radius` on every axis.

  roi: [*S] bool -> [*S] bool, True inside the box (clipped to the array).  Matches
  imageoperations.cropToTumorMask(padDistance=kernelRadius), which pads all axes, the
  force2D axis included.
  """
  nd = roi.ndim
  box = jnp.ones(roi.shape, bool)
  for d in range(nd):
    other = tuple(k for k in range(nd) if k != d)
    line = jnp.any(roi, axis=other)                        # [S_d]
    n = roi.shape[d]
    lo = jnp.argmax(line)
    hi = n - 1 - jnp.argmax(line[::-1])
    i = jnp.arange(n)
    inside = (i >= lo - radius) & (i <= hi + radius)
    box = box & inside.reshape((1,) * d + (n,) + (1,) * (nd - d - 1))
  return box


def _two_sum(a: jax.Array, b: jax.Array) -> Tuple[jax.Array, jax.Array]:
  """Error-free float sum: a + b == s + e exactly (Knuth's TwoSum)."""
  s = a + b
  bb = s - a
  e = (a - (s - bb)) + (b - bb)
  return s, e


def _ge_edge(x: jax.Array, low: jax.Array, kw: jax.Array) -> jax.Array:
  """Exact test x >= low + kw for float32 x, low and an exactly representable kw.

  pyradiomics compares against float64 (or integer) edges, where low + k * binWidth is
  exact; float32 rounding of the sum must not move a voxel across an edge.
  """
  t, e = _two_sum(x, -low)          # x - low == t + e
  u, e2 = _two_sum(t, -kw)          # t - kw == u + e2
  return (u + (e2 + e)) >= 0


def discretize(image: jax.Array, region: jax.Array, settings: GLCMSettings) -> jax.Array:
  """Gray levels as pyradiomics' binImage: 1-based bins, edges from voxels in `region`.

  image: [*S] float; region: [*S] bool (voxels whose values define the edges).
  Returns [*S] int32, 0 outside `region`.
  binWidth: edges low + k*W with low = min - (min mod W), i.e. bin = floor(x/W) -
  floor(min/W) + 1; binCount: numpy.histogram edges (min..max in binCount steps, the last
  edge + 1; a flat region uses min-0.5..max+0.5).
  """
  x = image.astype(jnp.float32)
  big = jnp.float32(np.finfo(np.float32).max)
  mn = jnp.min(jnp.where(region, x, big))
  mx = jnp.max(jnp.where(region, x, -big))
  if settings.binCount is None:
    w = jnp.float32(settings.binWidth)
    low = mn - jnp.mod(mn, w)
    k = jnp.floor((x - low) / w)
    k = jnp.where(_ge_edge(x, low, k * w), k, k - 1)
    k = jnp.where(_ge_edge(x, low, (k + 1) * w), k + 1, k)
    bins = k + 1
  else:
    nb = settings.binCount
    flat = mn == mx
    first = jnp.where(flat, mn - 0.5, mn)
    last = jnp.where(flat, mx + 0.5, mx)
    span = last - first
    # x >= first + k * span / nb  <=>  nb * (x - first) >= k * span (real arithmetic).
    scaled = jnp.float32(nb) * (x - first)
    k = jnp.clip(jnp.floor(scaled / span), 0, nb - 1)
    k = jnp.where(scaled >= k * span, k, k - 1)
    k = jnp.where((k + 1 < nb) & (scaled >= (k + 1) * span), k + 1, k)
    bins = jnp.clip(k, 0, nb - 1) + 1
  return jnp.where(region, bins, 0).astype(jnp.int32)


def _window(xp: jax.Array, offset: Sequence[int], shape: Sequence[int], pad: int) -> jax.Array:
  """xp padded by `pad` on every side -> the [*shape] view shifted by `offset`."""
  start = tuple(pad + o for o in offset)
  return jax.lax.slice(xp, start, tuple(s + n for s, n in zip(start, shape)))


def _anchor_ranges(angle: Angle, radius: int, kernel_axes: Sequence[bool]) -> list:
  """Per axis, the offsets o (from the kernel centre) of pair anchors x = v + o such that
  both x and x + angle lie in the kernel [v - r, v + r] (r = 0 on the force2D axis)."""
  ranges = []
  for d, a in enumerate(angle):
    r = radius if kernel_axes[d] else 0
    ranges.append(range(-r + max(0, -a), r - max(0, a) + 1))
  return ranges


def _pair_terms(g1, m1, g2, m2, symmetric: bool) -> Tuple[jax.Array, ...]:
  """Per-pair integers for pairs (x, x+a): valid, i+j (2i if asymmetric), ij, (i-j)^2, |i-j|.

  g*: int32 gray levels, 0 where not valid; m*: int32 1 where valid.
  """
  pv = m1 * m2
  diff = g1 - g2
  return (pv,
          pv * (g1 + g2) if symmetric else 2 * g1 * m2,
          g1 * g2,
          pv * diff * diff,
          pv * jnp.abs(diff))


def _angle_sums_direct(gp: jax.Array, mp: jax.Array, angle: Angle, radius: int,
                       kernel_axes: Sequence[bool], shape: Sequence[int], pad: int,
                       symmetric: bool) -> Tuple[jax.Array, ...]:
  """Kernel sums of `_pair_terms` over all pairs (x, x+angle) inside each voxel's kernel.

  gp, mp: [*shape + 2*pad] int32 (gray levels, validity).  Returns five [*shape] int32.
  An unrolled sum over the pair anchors of the kernel that XLA fuses into one loop: nothing
  is materialised, each pair is re-evaluated once per kernel containing it (best for
  kernelRadius 1 on CPU, where memory traffic costs more than arithmetic).
  """
  acc = None
  for off in itertools.product(*_anchor_ranges(angle, radius, kernel_axes)):
    off2 = tuple(o + a for o, a in zip(off, angle))
    terms = _pair_terms(_window(gp, off, shape, pad), _window(mp, off, shape, pad),
                        _window(gp, off2, shape, pad), _window(mp, off2, shape, pad),
                        symmetric)
    acc = terms if acc is None else tuple(t + u for t, u in zip(acc, terms))
  return acc


def _angle_sums_separable(gp: jax.Array, mp: jax.Array, angle: Angle, radius: int,
                          kernel_axes: Sequence[bool], shape: Sequence[int], pad: int,
                          symmetric: bool) -> Tuple[jax.Array, ...]:
  """Same result as `_angle_sums_direct`, as box sums: one per-pair field per statistic,
  then a running window along each axis (O(r) instead of O(r^3) adds per voxel; used for
  kernelRadius >= 2).  Fields are kept separate: stacking them would make XLA fuse the
  passes into one loop that re-evaluates every pair per window tap."""
  ranges = _anchor_ranges(angle, radius, kernel_axes)
  lo = [rg.start for rg in ranges]
  hi = [rg.stop - 1 for rg in ranges]
  ext = tuple(n + h - l for n, l, h in zip(shape, lo, hi))     # anchors needed
  off2 = tuple(l + a for l, a in zip(lo, angle))
  fields = _pair_terms(_window(gp, lo, ext, pad), _window(mp, lo, ext, pad),
                       _window(gp, off2, ext, pad), _window(mp, off2, ext, pad), symmetric)
  out = []
  for f in fields:
    for d in range(len(shape)):
      f = sum(jax.lax.slice_in_dim(f, t, t + shape[d], axis=d)
              for t in range(hi[d] - lo[d] + 1))
    out.append(f)
  return tuple(out)


def _angle_distances(angles: Sequence[Angle], spacing: jax.Array, norm: str) -> jax.Array:
  """Squared distance D_a with pyradiomics weight exp(-D_a); [A] float32."""
  a = jnp.abs(jnp.asarray(angles, jnp.float32)) * spacing[None, :]
  if norm == 'infinity':
    return jnp.max(a, axis=1) ** 2
  if norm == 'euclidean':
    return jnp.sum(a ** 2, axis=1)
  if norm == 'manhattan':
    return jnp.sum(a, axis=1) ** 2
  return jnp.zeros((len(angles),), jnp.float32)  # 'no_weighting' and unknown norms: weight 1


def _glcm_maps_3d(image: jax.Array, mask: jax.Array, spacing: jax.Array,
                  support: jax.Array, settings: GLCMSettings,
                  force2Ddimension: int) -> GLCMMaps:
  """3-D core of `glcm_maps`; force2Ddimension already mapped to a 3-D axis."""
  shape = image.shape
  r = settings.kernelRadius
  roi = (mask > 0) & support
  if settings.maskedKernel:
    region = roi
  else:
    region = kernel_crop_box(roi, r) & support
  g = discretize(image, region, settings)
  valid = region.astype(jnp.int32)
  pad = r + 1
  gp = jnp.pad(g, pad)
  mp = jnp.pad(valid, pad)
  kernel_axes = [not (settings.force2D and d == force2Ddimension) for d in range(3)]
  angles = glcm_angles(shape, settings.force2D, force2Ddimension)
  if not angles:
    empty = jnp.where(roi, jnp.nan, jnp.float32(settings.initValue))
    return GLCMMaps(empty, empty, empty, empty)

  angle_sums = _angle_sums_direct if r == 1 else _angle_sums_separable
  sums = [angle_sums(gp, mp, a, r, kernel_axes, shape, pad, settings.symmetricalGLCM)
          for a in angles]
  # 1 / n_a (0 where the kernel has no pair along a).  Everything below reads the pair
  # counts only through `inv`: a float division is an op XLA will not duplicate into its
  # consumers, so the count sums are evaluated once per angle and materialised here
  # (optimization_barrier is stripped before fusion on CPU and cannot do this).
  inv = [jnp.where(s[0] > 0, 1.0 / jnp.maximum(s[0], 1).astype(jnp.float32), 0.0)
         for s in sums]
  ok = [v > 0 for v in inv]
  # stats[k][a]: k = 0 i+j (2x JointAverage), 1 i*j, 2 (i-j)^2, 3 |i-j|; exact int32 sums.
  stats = [[s[k].astype(jnp.float32) for s in sums] for k in range(1, 5)]

  if settings.weightingNorm is None:
    # Per-angle normalisation, then the mean over angles (glcm.py):
    #  - nanmean for Autocorrelation / Contrast / DifferenceAverage: angles without pairs
    #    in this kernel are skipped; none at all -> NaN;
    #  - plain mean for JointAverage over the angles that have pairs somewhere in the ROI
    #    (pyradiomics deletes angles empty for every ROI voxel): if one of those has no pair
    #    in this kernel the voxel is NaN.
    cnt = sum(o.astype(jnp.float32) for o in ok)
    active = [jnp.any(o & roi) for o in ok]
    n_active = sum(act.astype(jnp.float32) for act in active)
    missing = functools.reduce(jnp.logical_or, [act & ~o for act, o in zip(active, ok)])
    ja = sum(jnp.where(act, s * v, 0.0) for act, s, v in zip(active, stats[0], inv))
    ja = jnp.where(missing, jnp.nan, ja / (2.0 * n_active))
    others = [sum(s * v for s, v in zip(stats[k], inv)) / cnt for k in (1, 2, 3)]
    maps = (others[0], ja, others[1], others[2])
  else:
    # One weighted matrix sum_a w_a P_a, normalised once; no pairs at all -> NaN.  Weights
    # are rescaled per voxel by the largest weight with pairs (the ratio is invariant) so
    # that exp(-D) cannot underflow float32 where float64 would not.
    dist = _angle_distances(angles, spacing.astype(jnp.float32), settings.weightingNorm)
    dmin = functools.reduce(jnp.minimum, [jnp.where(o, dist[i], jnp.inf)
                                          for i, o in enumerate(ok)])
    w = [jnp.where(o, jnp.exp(dmin - dist[i]), 0.0) for i, o in enumerate(ok)]
    den = sum(wi * jnp.where(o, 1.0 / v, 0.0) for wi, o, v in zip(w, ok, inv))
    num = [sum(wi * s for wi, s in zip(w, stats[k])) for k in range(4)]
    maps = (num[1] / den, num[0] / (2.0 * den), num[2] / den, num[3] / den)

  init = jnp.float32(settings.initValue)
  return GLCMMaps(*(jnp.where(roi, m, init) for m in maps))


def glcm_maps(image: jax.Array, mask: jax.Array, spacing: jax.Array,
              settings: GLCMSettings = GLCMSettings(),
              support: Optional[jax.Array] = None) -> GLCMMaps:
  """Voxel-wise GLCM Autocorrelation, JointAverage, Contrast, DifferenceAverage.

  image: [D, H, W] (or [H, W]) float/int, e.g. HU.
  mask: same shape, ROI = mask > 0.
  spacing: [ndim] float, voxel size per array axis (only used by weightingNorm).
  settings: GLCMSettings (static under jit).
  support: optional same-shape bool, the voxels that belong to the image (False for padding
    added to batch ROIs of different shapes); default all True.
  Returns GLCMMaps of four [*image.shape] float32 maps (FEATURES order): pyradiomics' value
  on ROI voxels (NaN where pyradiomics gives NaN), settings.initValue elsewhere.
  Pure and jit/vmap-able (settings static); dense cost ~ 150 pair evaluations per voxel
  for kernelRadius 1.
  """
  if image.shape != mask.shape:
    raise ValueError(f'image {image.shape} and mask {mask.shape} differ in shape')
  if image.ndim not in (2, 3):
    raise ValueError(f'expected a 2-D or 3-D image, got shape {image.shape}')
  spacing = jnp.asarray(spacing, jnp.float32)
  if support is None:
    support = jnp.ones(image.shape, bool)
  f2d = settings.force2Ddimension
  if image.ndim == 2:
    out = _glcm_maps_3d(image[None], mask[None], jnp.concatenate([jnp.ones(1), spacing]),
                        support[None].astype(bool), settings, f2d + 1)
    return GLCMMaps(*(m[0] for m in out))
  return _glcm_maps_3d(image, mask, spacing, support.astype(bool), settings, f2d)


@functools.partial(jax.jit, static_argnames=('settings',))
def glcm_maps_batch(images: jax.Array, masks: jax.Array, spacings: jax.Array,
                    supports: jax.Array, settings: GLCMSettings = GLCMSettings()) -> GLCMMaps:
  """Jitted, vmapped `glcm_maps` over ROIs of one shape.

  images, masks, supports: [B, *S]; spacings: [B, ndim].  Returns GLCMMaps of [B, *S].
  """
  fn = functools.partial(glcm_maps, settings=settings)
  return jax.vmap(lambda i, m, s, u: fn(i, m, s, support=u))(images, masks, spacings, supports)
