"""Whole-spine torso CT phantom: a few stacked vertebrae in a body, as a real CT would come.

It exercises the real-data path (`extract.py`) with a known answer: a CT volume on an
anisotropic grid with a non-zero origin (and, optionally, flipped axes), a vertebra label mask
in the VerSe or TotalSegmentator numbering, a truth JSON with each vertebra's physical centre,
and a manifest in the real-data input format (`io.read_real_manifest`).

Anatomy (physical LPS space: x to the patient's left, y posterior, z superior, as SimpleITK
reads every format): a contiguous range of vertebral bodies (default T11..L4) drawn from one
cohort subject (`cohort.draw_subjects` / `cohort.vertebra_rows`: size, BV/TV, marrow fat, DXA
readings), discs between them, a gentle AP curvature of the spine, paraspinal muscles, all inside
an elliptic body with a subcutaneous fat ring and air outside. The bodies are rendered by
`phantom.render_hu` on a box around the spine (bodies + 12 mm); outside the box the soft tissue
is the same kind of patchy fat/muscle field, cross-faded over 8 mm at the box edge, so that the
whole torso costs little more than the spine. The scanner (`phantom.acquire`) then adds its gain,
offset, blur and noise, all in millimetres on the anisotropic grid.

The image is rendered on an axis-aligned grid; `flip` re-expresses it with reversed axes (array
flipped, direction cosine -1, origin at the other corner): the same physical image.
All randomness comes from the `rng` argument.
"""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pandas as pd
import SimpleITK as sitk
from scipy import ndimage, special

from osteojax.data import cohort, io, labels, phantom
from osteojax.data import params as P
from osteojax.errors import ConfigError

CT_NAMES = {'nifti': 'ct.nii.gz', 'nrrd': 'ct.nrrd', 'dicom': 'ct_dicom'}
MASK_NAMES = {'nifti': 'mask.nii.gz', 'nrrd': 'mask.nrrd', 'dicom': 'mask.nii.gz'}
TRUTH = 'truth.json'
MANIFEST = 'manifest.csv'
HU_AIR = -1000.0
_BOX_MARGIN_MM = 12.0   # render_hu box around the bodies
_BLEND_MM = 8.0         # cross-fade of its soft tissue into the torso's


@dataclasses.dataclass(frozen=True)
class TorsoSpec:
  """What torso to make. Spacing and centre are (x, y, z) in mm; torso_mm is (width, depth)."""
  first: str = 'T11'                # most superior vertebra
  last: str = 'L4'                  # most inferior vertebra
  spacing: tuple = (0.9, 0.9, 2.0)
  center: tuple = (3.5, -12.0, -380.0)   # torso axis (x, y) and spine mid-height z, physical
  flip: tuple = ()                  # axes ('x', 'y', 'z') stored reversed
  torso_mm: tuple = (200.0, 150.0)
  fat_mm: float = 10.0              # subcutaneous fat ring
  spine_y_mm: float = 15.0          # spine centre posterior of the torso centre
  curvature_mm: float = 5.0         # anterior bulge of the spine at mid-height
  margin_mm: float = 6.0            # soft tissue above the first / below the last vertebra
  scanner: str = ''                 # '' = the site's first scanner
  device: str = 'hologic'
  convention: str = 'totalseg'

  def levels(self):
    """The vertebra levels, superior to inferior."""
    for lev in (self.first, self.last):
      if lev not in P.LEVEL_INDEX:
        raise ConfigError(f'unknown level {lev!r} (known: {", ".join(P.LEVELS)})')
    i, j = P.LEVEL_INDEX[self.first], P.LEVEL_INDEX[self.last]
    if j < i:
      raise ConfigError(f'level range {self.first}..{self.last} runs upwards')
    return list(P.LEVELS[i:j + 1])


def site_of(device):
  """The first site of params.SITES whose DXA device is `device`."""
  for site, spec in P.SITES.items():
    if spec['device'] == device:
      return site
  raise ConfigError(f'unknown device {device!r} (known: {", ".join(P.DEVICE_NAMES)})')


def _subject(rng, levels):
  """One cohort subject: (age, female, rows per level) with the cohort's latent truth."""
  age = float(np.clip(rng.normal(P.AGE_MEAN, P.AGE_SD), P.AGE_MIN + 1, P.AGE_MAX - 1))
  female = bool(rng.random() < P.FEMALE_FRACTION)
  subj = cohort.draw_subjects(rng, np.array([age]), np.array([female]))
  rows = [cohort.vertebra_rows(rng, subj, 0, age, female, [lev],
                               labeled=lev in P.LABELED_LEVELS)[0] for lev in levels]
  return age, female, rows


def spine_bodies(spec: TorsoSpec, rows, rng):
  """Body specs for phantom.render_hu (centres physical (z, y, x) mm), superior first."""
  x0, y0, z0 = spec.center
  sizes = [tuple(v * r['size_factor'] for v in cohort.level_size_mm(r['level'])) for r in rows]
  gaps = rng.uniform(*P.DISC_MM, size=len(rows) - 1)
  cz = [0.0]
  for k in range(1, len(rows)):
    cz.append(cz[-1] - (sizes[k - 1][0] / 2 + gaps[k - 1] + sizes[k][0] / 2))
  top, bottom = cz[0] + sizes[0][0] / 2, cz[-1] - sizes[-1][0] / 2
  shift = z0 - (top + bottom) / 2
  span = top - bottom + 2 * spec.margin_mm
  bodies = []
  for r, size, z in zip(rows, sizes, cz):
    z = z + shift
    dy = -spec.curvature_mm * np.cos(np.pi * (z - z0) / span)
    bodies.append(dict(level=r['level'], center=(z, y0 + spec.spine_y_mm + dy, x0), size=size,
                       bvtv=float(r['bvtv']), pdff=float(r['pdff']),
                       cortex_mm=float(rng.uniform(*P.CORTEX_MM))))
  return bodies


def _axis(lo, hi, step):
  """Grid coordinates lo, lo + step, ... covering [lo, hi]: float64 [n]."""
  return lo + np.arange(int(np.ceil((hi - lo) / step)) + 1) * step


def _ellipse_pv(y, x, a, b, h):
  """Partial-volume occupancy of the ellipse (x/a)^2 + (y/b)^2 < 1 (approximate distance)."""
  f = np.sqrt((x / a) ** 2 + (y / b) ** 2)
  return np.clip(0.5 - (f - 1) * min(a, b) / h, 0, 1)


def _soft_tissue(rng, shape, h, step=4):
  """Patchy fat/muscle HU [D, H, W] like render_hu's, from a field drawn `step` x coarser."""
  coarse = tuple(-(-n // step) for n in shape)
  t = phantom.smooth_field(rng, coarse, 12.0 / (h * step))
  t = ndimage.zoom(t, [n / c for n, c in zip(shape, coarse)], order=1, mode='nearest')
  t = t[:shape[0], :shape[1], :shape[2]]
  fat = special.expit(2.5 * t - 1.0)
  return ((1 - fat) * P.HU_SOFT_TISSUE + fat * P.HU_FAT_TISSUE).astype(np.float32)


def _ramp(coord, lo, hi):
  """1 inside [lo + blend, hi - blend], falling linearly to 0 at lo and hi."""
  return np.clip(np.minimum(coord - lo, hi - coord) / _BLEND_MM, 0, 1)


def render_torso(spec: TorsoSpec, bodies, rng):
  """True HU and labels on the axis-aligned grid.

  Returns (hu [D, H, W] float32, labels [D, H, W] uint8 in spec.convention, origin (x, y, z) mm)
  where array index [k, j, i] sits at physical origin + (i, j, k) * spacing.
  """
  sx, sy, sz = spec.spacing
  x0, y0, _ = spec.center
  a, b = spec.torso_mm[0] / 2, spec.torso_mm[1] / 2
  tops = [bd['center'][0] + bd['size'][0] / 2 for bd in bodies]
  bottoms = [bd['center'][0] - bd['size'][0] / 2 for bd in bodies]
  z = _axis(min(bottoms) - spec.margin_mm, max(tops) + spec.margin_mm, sz)
  y = _axis(y0 - b - 5.0, y0 + b + 5.0, sy)
  x = _axis(x0 - a - 5.0, x0 + a + 5.0, sx)
  h = min(sx, sy)
  bg = _soft_tissue(rng, (len(z), len(y), len(x)), h)
  # render_hu on a box around the spine, cross-faded into the torso's soft tissue.
  half_w = max(bd['size'][1] for bd in bodies) / 2 + _BOX_MARGIN_MM
  ys = [bd['center'][1] for bd in bodies]
  half_d = max(bd['size'][2] for bd in bodies) / 2 + _BOX_MARGIN_MM
  bx = np.flatnonzero(np.abs(x - x0) <= half_w)
  by = np.flatnonzero((y >= min(ys) - half_d) & (y <= max(ys) + half_d))
  xb, yb = x[bx[0]:bx[-1] + 1], y[by[0]:by[-1] + 1]
  zz = z.astype(np.float32)[:, None, None]
  hu_box, occ = phantom.render_hu(zz, yb.astype(np.float32)[None, :, None],
                                  xb.astype(np.float32)[None, None, :], bodies, (sz, sy, sx), rng)
  w = (_ramp(yb, yb[0], yb[-1])[:, None] * _ramp(xb, xb[0], xb[-1])[None, :])[None]
  hu = bg
  box = (slice(None), slice(by[0], by[-1] + 1), slice(bx[0], bx[-1] + 1))
  hu[box] = w * hu_box + (1 - w) * hu[box]
  # Paraspinal muscles behind the spine, subcutaneous fat, air.
  yy, xx = y[:, None], x[None, :]
  depth = max(bd['size'][2] for bd in bodies)
  ym = max(ys) + depth / 2 + 8.0 + 9.0
  muscle = np.maximum(_ellipse_pv(yy - ym, xx - x0 - 26.0, 20.0, 9.0, h),
                      _ellipse_pv(yy - ym, xx - x0 + 26.0, 20.0, 9.0, h))
  inner = _ellipse_pv(yy - y0, xx - x0, a - spec.fat_mm, b - spec.fat_mm, h)
  outer = _ellipse_pv(yy - y0, xx - x0, a, b, h)
  soft = (muscle * P.HU_SOFT_TISSUE)[None] + (1 - muscle)[None] * hu
  hu = HU_AIR + outer * (P.HU_FAT_TISSUE - HU_AIR) + inner * (soft - P.HU_FAT_TISSUE)
  # Label of each body where it occupies at least half a voxel.
  lab = np.zeros(hu.shape, np.uint8)
  lab_box = np.zeros(hu_box.shape, np.uint8)
  best = np.full(hu_box.shape, 0.5, np.float32)
  for bd, o in zip(bodies, occ):
    take = o >= best
    lab_box[take] = labels.level_to_label(bd['level'], spec.convention)
    best = np.where(take, o, best)
  lab[box] = lab_box
  return hu.astype(np.float32), lab, (x[0], y[0], z[0])


def _flipped(array, origin, spacing, flip):
  """Re-express an axis-aligned [z, y, x] array with the axes in `flip` reversed.

  Returns (array, origin (x, y, z), direction 9-tuple): the same physical image.
  """
  axes = {'x': 2, 'y': 1, 'z': 0}
  origin, direction = list(origin), np.eye(3)
  for name in flip:
    if name not in axes:
      raise ConfigError(f'unknown axis {name!r} to flip (x, y or z)')
    ax = axes[name]
    array = np.flip(array, ax)
    d = 2 - ax   # (x, y, z) position of this array axis
    origin[d] += (array.shape[ax] - 1) * spacing[d]
    direction[d, d] = -1.0
  return np.ascontiguousarray(array), tuple(origin), tuple(direction.ravel())


def make_torso(spec: TorsoSpec, rng, patient='torso'):
  """A torso CT, its vertebra labels, the truth and a real-data manifest.

  Returns dict(ct=sitk int16 image, mask=sitk uint8 image, truth=dict, manifest=DataFrame with
  columns io.REAL_COLUMNS + sex, age, scanner; its ct_path / mask_path are the nifti file names).
  """
  levels = spec.levels()
  labels.label_map(spec.convention)
  for lev in levels:
    labels.level_to_label(lev, spec.convention)
  site = site_of(spec.device)
  scanner = spec.scanner or P.SITES[site]['scanners'][0]
  if scanner not in P.SCANNERS:
    raise ConfigError(f'unknown scanner {scanner!r} (known: {", ".join(P.SCANNERS)})')
  age, female, rows = _subject(rng, levels)
  bodies = spine_bodies(spec, rows, rng)
  hu, lab, origin = render_torso(spec, bodies, rng)
  sx, sy, sz = spec.spacing
  ct = phantom.acquire(hu, scanner, (sz, sy, sx), 1, rng)
  ct = np.clip(np.round(ct), -1024, 3071).astype(np.int16)
  ct_arr, org, direction = _flipped(ct, origin, spec.spacing, spec.flip)
  lab_arr, _, _ = _flipped(lab, origin, spec.spacing, spec.flip)
  ct_img = phantom.to_image(ct_arr, (sz, sy, sx), org, direction)
  mask_img = phantom.to_image(lab_arr, (sz, sy, sx), org, direction)
  s = P.SCANNERS[scanner]
  sex = 'F' if female else 'M'
  vertebrae = []
  for bd, r in zip(bodies, rows):
    value = labels.level_to_label(bd['level'], spec.convention)
    k, j, i = np.nonzero(lab == value)
    centroid = np.asarray(origin) + np.array([i.mean(), j.mean(), k.mean()]) * spec.spacing
    center = (bd['center'][2], bd['center'][1], bd['center'][0])
    hu_true = float(r['hu_true'])
    v = dict(level=bd['level'], label=value, center=[float(c) for c in center],
             center_index=list(ct_img.TransformPhysicalPointToContinuousIndex(center)),
             mask_centroid=[float(c) for c in centroid], voxels=int(len(i)),
             size_mm=[float(c) for c in bd['size']], cortex_mm=bd['cortex_mm'],
             bvtv=bd['bvtv'], pdff=bd['pdff'], hu_true=hu_true,
             hu_scanner=hu_true + (s['kv_gain'] - 1) * max(hu_true, 0.0) + s['offset'])
    if bd['level'] in P.LABELED_LEVELS:
      v.update(bmd=float(r[f'bmd_{spec.device}']), t_score=float(r[f't_{spec.device}']))
    vertebrae.append(v)
  truth = dict(patient=patient, site=site, device=spec.device, scanner=scanner, age=age,
               sex=sex, convention=spec.convention, spec=dataclasses.asdict(spec),
               size=list(ct_img.GetSize()), spacing=list(ct_img.GetSpacing()),
               origin=list(ct_img.GetOrigin()), direction=list(ct_img.GetDirection()),
               vertebrae=vertebrae)
  manifest = pd.DataFrame([dict(patient=patient, ct_path=CT_NAMES['nifti'],
                                mask_path=MASK_NAMES['nifti'], site=site, device=spec.device,
                                level=v['level'], bmd=v.get('bmd', np.nan), sex=sex,
                                age=round(age, 1), scanner=scanner) for v in vertebrae])
  return dict(ct=ct_img, mask=mask_img, truth=truth, manifest=manifest)


def write_torso(torso, out_dir, fmt='nifti'):
  """Write a make_torso result to out_dir (staged: whole or absent). fmt: nifti | nrrd | dicom.

  Files: the CT (CT_NAMES[fmt]: a file, or a folder of DICOM slices), the mask
  (MASK_NAMES[fmt]), truth.json and manifest.csv (paths relative to out_dir).
  """
  if fmt not in CT_NAMES:
    raise ConfigError(f'unknown format {fmt!r} (known: {", ".join(CT_NAMES)})')
  manifest = torso['manifest'].assign(ct_path=CT_NAMES[fmt], mask_path=MASK_NAMES[fmt])
  with io.staged_dir(out_dir, TRUTH) as tmp:
    ct_path = os.path.join(tmp, CT_NAMES[fmt])
    if fmt == 'dicom':
      io.write_dicom_series(torso['ct'], ct_path, patient=torso['truth']['patient'])
    else:
      sitk.WriteImage(torso['ct'], ct_path, useCompression=True)
    sitk.WriteImage(torso['mask'], os.path.join(tmp, MASK_NAMES[fmt]), useCompression=True)
    manifest.to_csv(os.path.join(tmp, MANIFEST), index=False)
    with open(os.path.join(tmp, TRUTH), 'w', encoding='utf-8') as f:
      json.dump(torso['truth'], f, indent=1)
  return manifest
