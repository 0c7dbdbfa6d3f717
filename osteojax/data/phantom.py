"""OsteoSim images: vertebral bodies rendered as CT from a cohort row's truth.

A vertebral body is a superelliptic cylinder (width x depth x height from the level and the
patient's size) with concave endplates and a posterior indentation. Inside: a cortical shell of
0.25-0.5 mm (partial volume) and a trabecular compartment whose bone fraction is BV/TV = vBMD /
1000 mg/cm3, laid out as a sheet-like network (the level set |g| < t of a smooth random field g,
t set so the expected fraction is exactly BV/TV) in marrow whose HU follows its fat fraction.
Neighbouring vertebrae and discs sit above and below, soft tissue and fat around.

The scanner then acts: kV gain on bone, HU offset, in-plane reconstruction blur and slice
profile, averaging onto the stored grid, and correlated noise whose SD follows the voxel volume.
All randomness comes from the `rng` argument.
"""
from __future__ import annotations

import numpy as np
import scipy.fft
import SimpleITK as sitk
from scipy import ndimage, special

from osteojax.data import cohort
from osteojax.data import params as P

_W = 0.5  # soft edge width of the trabecular sheets, in units of the field's SD


def _sheet_fraction_table():
  """E[clip((t - |g|) / w + 1/2, 0, 1)] for g ~ N(0, 1), tabulated over thresholds t."""
  g = np.linspace(-6, 6, 4001)
  pdf = np.exp(-g ** 2 / 2) / np.sqrt(2 * np.pi)
  ts = np.linspace(-_W / 2, 4.0, 600)
  frac = np.clip((ts[:, None] - np.abs(g)[None]) / _W + 0.5, 0, 1)
  return ts, (frac * pdf).sum(1) * (g[1] - g[0])


_TS, _FRACS = _sheet_fraction_table()


def sheet_threshold(bvtv):
  """Threshold t on |g| whose soft level set occupies a fraction `bvtv` of space on average."""
  return np.interp(bvtv, _FRACS, _TS)


def gaussian_filter_wrap(x, sigma, truncate: float = 4.0):
  """ndimage.gaussian_filter(x, sigma, mode='wrap', truncate=truncate), by FFT.

  The same truncated, normalised kernels, folded onto each (periodic) axis, multiplied in the
  Fourier domain: equal to scipy's sums up to float rounding, and several times faster once
  the kernel is long (the soft-tissue field's runs over the whole grid).
  """
  x = np.asarray(x, np.float32)
  sigma = np.broadcast_to(np.asarray(sigma, np.float64), (x.ndim,))
  spec = scipy.fft.rfftn(x)
  for ax, (n, s) in enumerate(zip(x.shape, sigma)):
    r = int(truncate * s + 0.5)         # scipy's kernel radius
    t = np.arange(-r, r + 1)
    w = np.exp(-0.5 * (t / s) ** 2) if s > 0 else (t == 0).astype(np.float64)
    k = np.zeros(n)
    np.add.at(k, t % n, w / w.sum())
    kf = scipy.fft.rfft(k) if ax == x.ndim - 1 else scipy.fft.fft(k)
    spec *= kf.astype(np.complex64).reshape([-1 if a == ax else 1 for a in range(x.ndim)])
  return scipy.fft.irfftn(spec, x.shape, axes=range(x.ndim)).astype(np.float32)


def smooth_field(rng, shape, sigma_vox):
  """Gaussian random field with unit SD and Gaussian correlation of `sigma_vox` voxels."""
  noise = rng.standard_normal(shape).astype(np.float32)
  if max(np.broadcast_to(sigma_vox, (len(shape),))) > 2.0:      # long kernels: FFT
    f = gaussian_filter_wrap(noise, sigma_vox)
  else:
    f = ndimage.gaussian_filter(noise, sigma_vox, mode='wrap')
  return f / max(float(f.std()), 1e-6)


def outline_sdf(y, x, width, depth):
  """Signed distance (mm) to the body's axial outline: (distance along the ray, outline F)."""
  a, b = width / 2, depth / 2
  ex = 2.5
  f = (np.abs(x / a) ** ex + np.abs(y / b) ** ex) ** (1 / ex)
  r = np.sqrt(x ** 2 + y ** 2)
  return r - np.where(f > 1e-6, r / np.maximum(f, 1e-6), min(a, b)), f


def body_sdf(z, y, x, height, width, depth):
  """Approximate signed distance (mm, < 0 inside) to a vertebral body centred at the origin.

  z, y, x: broadcastable coordinate arrays in mm (z superior, y posterior, x left-right).
  """
  d_xy, f = outline_sdf(y, x, width, depth)
  hz = height / 2 * (1 - 0.06 * np.clip(1 - f ** 2, 0, 1))       # concave endplates
  d = np.maximum(d_xy, np.abs(z) - hz)
  # Posterior indentation where the body meets the spinal canal.
  ha, hb, hy = 0.35 * width / 2, 0.3 * depth / 2, 1.1 * depth / 2
  fh = np.sqrt((x / ha) ** 2 + ((y - hy) / hb) ** 2)
  rh = np.sqrt(x ** 2 + (y - hy) ** 2)
  d_hole = rh - np.where(fh > 1e-6, rh / np.maximum(fh, 1e-6), min(ha, hb))
  return np.maximum(d, -d_hole)


def _pv(d, h):
  """Partial-volume occupancy of the region d < 0 for a voxel of size h (mm)."""
  return np.clip(0.5 - d / h, 0.0, 1.0)


def _voxel(h):
  """(hz, hy, hx) mm from a scalar or a 3-sequence."""
  return np.broadcast_to(np.asarray(h, np.float64), (3,))


def render_hu(zz, yy, xx, bodies, h, rng):
  """True HU (reference 120 kV scanner) of a spine segment on a grid.

  zz, yy, xx: [D, H, W] (or broadcastable) coordinates in mm; bodies: list of dicts with keys
  center (z, y, x) mm, size (height, width, depth) mm, bvtv, pdff, cortex_mm; h: voxel size mm
  (scalar, or (hz, hy, hx) for anisotropic grids).
  Returns (hu [D, H, W] float32, occupancy list [D, H, W] per body in [0, 1]).
  """
  shape = np.broadcast_shapes(zz.shape, yy.shape, xx.shape)
  vox = _voxel(h)
  field = smooth_field(rng, shape, tuple(P.TRABECULAR_CORR_MM / vox))
  tissue = smooth_field(rng, shape, tuple(12.0 / vox))
  h = float(np.prod(vox) ** (1 / 3))   # partial-volume edge width
  fat = special.expit(2.5 * tissue - 1.0)             # patchy fat in the soft tissue
  hu = (1 - fat) * P.HU_SOFT_TISSUE + fat * P.HU_FAT_TISSUE
  occupied = np.zeros(shape, np.float32)
  occupancies = []
  centers = sorted(bodies, key=lambda b: b['center'][0])
  for i, body in enumerate(centers):
    cz, cy, cx = body['center']
    height, width, depth = body['size']
    # Only the slices the body can reach: beyond |z - cz| = height/2 + h/2 its signed distance
    # is >= h/2, so its occupancy is exactly 0 and the loop would leave hu unchanged.
    s = _z_slab(zz, shape, cz - height / 2 - h, cz + height / 2 + h)
    d = body_sdf(zz[s] - cz, yy - cy, xx - cx, height, width, depth)
    outer = _pv(d, h)
    inner = _pv(d + body['cortex_mm'], h)
    shell = outer - inner
    bone = np.clip((sheet_threshold(body['bvtv']) - np.abs(field[s])) / _W + 0.5, 0, 1)
    marrow = cohort.marrow_hu(body['pdff'])
    trab = bone * P.BONE_TISSUE_HU + (1 - bone) * marrow
    body_hu = shell * P.HU_CORTEX_TISSUE + inner * trab
    free = np.clip(1 - occupied[s], 0, 1)
    hu[s] = hu[s] * (1 - outer * free) + body_hu * free
    occupied[s] = np.maximum(occupied[s], outer)
    full = np.zeros(shape, outer.dtype)
    full[s] = outer
    occupancies.append(full)
  for lower, upper in zip(centers[:-1], centers[1:]):  # discs fill the free space between bodies
    cz, cy, cx = lower['center']
    nz = upper['center'][0]
    s = _z_slab(zz, shape, cz - h, nz + h)         # the gap between the two centres
    gap = np.abs(zz[s] - (nz + cz) / 2) - (nz - cz) / 2
    d_disc = np.maximum(outline_sdf(yy - cy, xx - cx, lower['size'][1], lower['size'][2])[0], gap)
    disc = _pv(d_disc, h) * np.clip(1 - occupied[s], 0, 1)
    hu[s] = hu[s] * (1 - disc) + disc * P.HU_DISC
    occupied[s] = np.maximum(occupied[s], disc)
  return hu.astype(np.float32), [occupancies[centers.index(b)] for b in bodies]


def _z_slab(zz, shape, lo, hi):
  """The slices [i0, i1) along axis 0 holding every lo < z < hi, when z varies along axis 0
  alone (zz [D, 1, 1]); all of them otherwise."""
  if zz.shape != (shape[0], 1, 1):
    return slice(0, shape[0])
  i = np.flatnonzero((zz[:, 0, 0] > lo) & (zz[:, 0, 0] < hi))
  return slice(int(i[0]), int(i[-1]) + 1) if i.size else slice(0, 0)


def scanner_blur_mm(scanner):
  """(sigma_z, sigma_xy) in mm of a scanner's point spread: slice profile and kernel + pixel."""
  s = P.SCANNERS[scanner]
  sig_xy = np.sqrt((s['fwhm_mm'] / 2.355) ** 2 + s['pixel_mm'] ** 2 / 12)
  return s['slice_mm'] / 2.355, sig_xy


def noise_sd(scanner, spacing_mm):
  """Noise SD (HU) on a grid of `spacing_mm` (z, y, x): the scanner's 1 mm figure, scaled by
  the square root of the voxel volume it ends up averaged over (DATA_FACTS §8)."""
  s = P.SCANNERS[scanner]
  vz = max(s['slice_mm'], spacing_mm[0])
  vxy = max(s['pixel_mm'], spacing_mm[1]) * max(s['pixel_mm'], spacing_mm[2])
  return s['noise_1mm'] * np.sqrt(P.NOISE_REF_VOXEL_MM3 / (vz * vxy))


def acquire(hu, scanner, h, factor, rng):
  """The scanner's view of true HU on a fine grid of voxel h mm, averaged by `factor`.

  hu: [D, H, W] float32 with D, H, W multiples of factor; h: scalar or (hz, hy, hx) mm.
  Returns float32 [D/f, H/f, W/f].
  """
  s = P.SCANNERS[scanner]
  vox = _voxel(h)
  hu = hu + (s['kv_gain'] - 1) * np.maximum(hu, 0) + s['offset']
  sz, sxy = scanner_blur_mm(scanner)
  psf = np.array([sz, sxy, sxy])
  hu = ndimage.gaussian_filter(hu, tuple(psf / vox), mode='nearest')
  if factor > 1:
    d, hh, w = hu.shape
    hu = hu.reshape(d // factor, factor, hh // factor, factor, w // factor, factor).mean((1, 3, 5))
  out = vox * factor
  noise = rng.standard_normal(hu.shape).astype(np.float32)
  noise = ndimage.gaussian_filter(noise, tuple(psf / out * np.array([0.5, 1, 1])), mode='wrap')
  noise /= max(float(noise.std()), 1e-6)
  return hu + noise * noise_sd(scanner, tuple(out))


def vertebra_bodies(row, rng, center_z=0.0, neighbours=True):
  """Body specs (see render_hu) of a row's vertebra and, optionally, the ones above/below."""
  idx = P.LEVEL_INDEX[row['level']]
  size = float(row['size_factor'])

  def spec(level_idx, cz):
    lev = P.LEVELS[level_idx]
    rel = P.LEVEL_VBMD_REL[lev] / P.LEVEL_VBMD_REL[row['level']]
    dims = tuple(v * size for v in cohort.level_size_mm(lev))
    return dict(level=lev, center=(cz, 0.0, 0.0), size=dims,
                bvtv=float(np.clip(row['bvtv'] * rel, 0.01, 0.6)), pdff=float(row['pdff']),
                cortex_mm=float(rng.uniform(*P.CORTEX_MM)))

  target = spec(idx, center_z)
  bodies = [target]
  if neighbours:
    h0 = target['size'][0]
    for step in (-1, 1):  # -1: the level above (cranial, +z), +1: below
      j = idx + step
      if 0 <= j < len(P.LEVELS):
        h1 = cohort.level_size_mm(P.LEVELS[j])[0] * size
        gap = rng.uniform(*P.DISC_MM)
        bodies.append(spec(j, center_z - step * (h0 / 2 + gap + h1 / 2)))
  return bodies


def roi_grid(geometry: P.RoiGeometry):
  """The supersampled ROI grid's coordinates in mm, centred: zz [D, 1, 1], yy [1, H, 1],
  xx [1, 1, W] float32 (D, H, W = geometry.shape * supersample)."""
  h = geometry.spacing_mm / geometry.supersample
  z, y, x = [((np.arange(n * geometry.supersample) - (n * geometry.supersample - 1) / 2) * h)
             .astype(np.float32) for n in geometry.shape]
  return z[:, None, None], y[None, :, None], x[None, None, :]


def render_roi(row, geometry: P.RoiGeometry, rng):
  """CT ROI of one manifest row. Returns (hu int16 [z, y, x], body mask uint8 [z, y, x])."""
  f = geometry.supersample
  h = geometry.spacing_mm / f
  zz, yy, xx = roi_grid(geometry)
  bodies = vertebra_bodies(row, rng)
  hu, occ = render_hu(zz, yy, xx, bodies, h, rng)
  ct = acquire(hu, row['scanner'], h, f, rng)
  d, hh, w = geometry.shape
  mask = occ[0].reshape(d, f, hh, f, w, f).mean((1, 3, 5)) >= 0.5
  ct = np.clip(np.round(ct), -1024, 3071).astype(np.int16)
  return ct, mask.astype(np.uint8)


def to_image(array, spacing_mm, origin=(0.0, 0.0, 0.0), direction=None):
  """numpy [z, y, x] -> SimpleITK image with (x, y, z) spacing/origin and optional direction."""
  img = sitk.GetImageFromArray(array)
  img.SetSpacing(tuple(float(s) for s in spacing_mm[::-1]))
  img.SetOrigin(tuple(float(o) for o in origin))
  if direction is not None:
    img.SetDirection(tuple(float(v) for v in direction))
  return img


def sample_rois(n: int, shape=(32, 32, 32), spacing_mm: float = 1.8, seed: int = 0):
  """n OsteoSim ROIs spread over the labeled vBMD range, for benchmarks and tests.

  Returns a list of (image int16 [z, y, x] HU, mask uint8, spacing (z, y, x) mm).
  """
  t = cohort.sample_cohort(0.02, seed)
  lab = t[t.split != 'pretrain'].sort_values('vbmd')
  rows = lab.iloc[np.linspace(0, len(lab) - 1, n).astype(int)]
  geometry = P.RoiGeometry(tuple(shape), spacing_mm)
  out = []
  for i, (_, row) in enumerate(rows.iterrows()):
    ct, mask = render_roi(row, geometry, np.random.default_rng([seed, 2, i]))
    out.append((ct, mask, (spacing_mm,) * 3))
  return out
