"""Phantomless HU calibration of a CT from two internal references: air and subcutaneous fat.

A scanner's HU scale can sit a few tens of HU off (params.SCANNERS: offsets -15..+21 HU, the
spread Jang 2019 reports between scanners and ROI methods) and the model reads bone density
from HU. Two materials every body CT holds give a linear correction without a phantom, as
internal-calibration methods do (air with adipose tissue or blood: e.g. Lee et al., Bone 2017;
review: Curr Osteoporos Rep 2023, Table 2):

  air   voxels outside the body, at least AIR_MARGIN_MM from any tissue (clear of the
        skin's partial volume and of the table), above AIR_PAD_HU (lower values are the
        padding outside the reconstruction circle, e.g. -2048 or -3024), nominal AIR_HU;
  fat   voxels of the adipose window FAT_WINDOW_HU in a shell FAT_SHELL_MM under the body
        outline (the subcutaneous fat), nominal FAT_HU.

Both are measured by their median (robust to noise, to the few air voxels clipped at -1024 and
to stray tissue), on the axial slices that hold the vertebrae (at most MAX_SLICES of them, so
the cost does not grow with the scan) and in-plane (the skin is the body's outline in each
slice). The fat median is measured twice: in the adipose window, then in a window of
+-FAT_REFINE_HU around the first median, so that an offset that moves the fat peak towards one
edge of the fixed window does not truncate one side of it. HU are then mapped linearly,
HU' = slope * HU + intercept, so that the two measured values land on their nominal ones.

What it corrects: an offset and a gain common to all materials. It cannot correct the tube
voltage's bone-only gain (100 kV reads bone 10-15 % higher, params.SCANNERS kv_gain: air and
fat do not show it), and it trusts the patient's fat to read FAT_HU: a real patient's
subcutaneous fat varies by about +-10 HU, which moves trabecular bone (~150 HU) by about
+-13 HU after calibration. Implausible references stop the case (CalibrationError).

The generated torso (osteojax/data/torso.py) renders both: air (HU_AIR = -1000) outside an
elliptic body with a subcutaneous fat ring (TorsoSpec.fat_mm, 10 mm, params.HU_FAT_TISSUE =
-95 HU) under its outline, then the scanner's offset, blur and noise (phantom.acquire).
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from osteojax.data import io

AIR_HU = -1000.0          # air: -1000 HU by the definition of the Hounsfield scale
FAT_HU = -95.0            # subcutaneous adipose tissue at 120 kV: published means lie about
                          # -90..-110 HU; -95 is the textbook value the generator renders
                          # (params.HU_FAT_TISSUE). A research choice: see the module note.
FAT_WINDOW_HU = (-190.0, -30.0)   # the adipose-tissue window of CT body-composition work
                                  # (Kvist 1988; the Alberta protocol; Comp2Comp-like tools)
FAT_REFINE_HU = 80.0      # half-width of the second, centred fat window
BODY_HU = -500.0          # body / air threshold (half-way between air and fat)
AIR_PAD_HU = -1500.0      # below: padding outside the reconstruction circle, not air
AIR_MARGIN_MM = 10.0      # air voxels at least this far (in-plane) from any tissue
FAT_SHELL_MM = (2.0, 8.0)  # fat shell: this deep under the body outline (in-plane)
MAX_SLICES = 24           # axial slices measured, spread over the vertebrae's extent
MIN_REFERENCE_VOXELS = 500
AIR_PLAUSIBLE_HU = (-1100.0, -900.0)   # measured air outside: not air (or a broken scale)
FAT_PLAUSIBLE_HU = (-160.0, -30.0)     # measured fat outside: not fat (or a broken scale)
SLOPE_RANGE = (0.9, 1.1)  # fat-to-air spread within 10 % of nominal, or the regions are wrong


class CalibrationError(io.OsteoDataError):
  """The CT's air or fat reference is missing or implausible: that case cannot be calibrated."""


def _slice_axis(img: sitk.Image) -> int:
  """Array axis ([z, y, x] order) of the image axis closest to the patient's S-I direction."""
  d = np.abs(np.asarray(img.GetDirection()).reshape(3, 3))   # d[physical, image axis]
  return 2 - int(np.argmax(d[2]))


def _slices(mask_arr: np.ndarray, axis: int, n: int) -> np.ndarray:
  """Up to n evenly spread indices along `axis` of the slices holding any mask voxel."""
  other = tuple(a for a in range(3) if a != axis)
  held = np.flatnonzero(mask_arr.any(axis=other))
  if len(held) <= n:
    return held
  return held[np.round(np.linspace(0, len(held) - 1, n)).astype(int)]


def _body(slice_hu: np.ndarray) -> np.ndarray:
  """The body of one axial slice: largest component above BODY_HU, holes (lungs, gas) filled."""
  tissue = slice_hu > BODY_HU
  lab, n = ndimage.label(tissue)
  if n == 0:
    return tissue
  sizes = ndimage.sum_labels(tissue, lab, np.arange(1, n + 1))
  return ndimage.binary_fill_holes(lab == 1 + int(np.argmax(sizes)))


def reference_voxels(ct: sitk.Image, mask: sitk.Image):
  """(air HU [N], fat HU [M], slices used): the candidate reference voxels of a CT.

  ct: HU image; mask: the vertebra label image on its grid (selects the slices).
  """
  hu = sitk.GetArrayViewFromImage(ct)
  axis = _slice_axis(ct)
  spacing = np.asarray(ct.GetSpacing())[::-1]              # [z, y, x] order
  plane = tuple(float(s) for k, s in enumerate(spacing) if k != axis)
  idx = _slices(sitk.GetArrayViewFromImage(mask) > 0, axis, MAX_SLICES)
  air, fat = [], []
  for k in idx:
    s = np.take(hu, k, axis=axis).astype(np.float32)
    body = _body(s)
    if not body.any():
      continue
    depth = ndimage.distance_transform_edt(body, sampling=plane)       # mm under the outline
    away = ndimage.distance_transform_edt(s <= BODY_HU, sampling=plane)  # mm from any tissue
    air.append(s[~body & (away >= AIR_MARGIN_MM) & (s >= AIR_PAD_HU)])
    shell = body & (depth >= FAT_SHELL_MM[0]) & (depth <= FAT_SHELL_MM[1])
    fat.append(s[shell])
  cat = lambda v: np.concatenate(v) if v else np.zeros(0, np.float32)
  return cat(air), cat(fat), [int(k) for k in idx]


def _median_in(v, lo, hi):
  w = v[(v >= lo) & (v <= hi)]
  return (float(np.median(w)) if len(w) else float('nan')), int(len(w))


def measure(ct: sitk.Image, mask: sitk.Image, path: str) -> dict:
  """The air and fat references of a CT and the linear map onto their nominal HU.

  Returns dict(air_hu, fat_hu (measured medians), air_voxels, fat_voxels, slope, intercept,
  nominal_air_hu, nominal_fat_hu, slices). Raises CalibrationError(path, ...) when a reference
  has fewer than MIN_REFERENCE_VOXELS voxels or reads outside its plausible range.
  """
  air_v, shell_v, slices = reference_voxels(ct, mask)
  if len(air_v) < MIN_REFERENCE_VOXELS:
    raise CalibrationError(path, f'calibration: {len(air_v)} air voxels at least '
                                 f'{AIR_MARGIN_MM:g} mm outside the body (need '
                                 f'{MIN_REFERENCE_VOXELS}); is the field of view cropped to '
                                 f'the body? Run without --calibrate')
  air = float(np.median(air_v))
  fat, n_fat = _median_in(shell_v, *FAT_WINDOW_HU)
  if n_fat >= MIN_REFERENCE_VOXELS:
    fat, n_fat = _median_in(shell_v, fat - FAT_REFINE_HU, fat + FAT_REFINE_HU)
  if n_fat < MIN_REFERENCE_VOXELS:
    raise CalibrationError(path, f'calibration: {n_fat} subcutaneous fat voxels '
                                 f'({FAT_WINDOW_HU[0]:g}..{FAT_WINDOW_HU[1]:g} HU, '
                                 f'{FAT_SHELL_MM[0]:g}-{FAT_SHELL_MM[1]:g} mm under the skin; '
                                 f'need {MIN_REFERENCE_VOXELS}); run without --calibrate')
  if not AIR_PLAUSIBLE_HU[0] <= air <= AIR_PLAUSIBLE_HU[1]:
    raise CalibrationError(path, f'calibration: air outside the body reads {air:.0f} HU, not '
                                 f'within {AIR_PLAUSIBLE_HU[0]:g}..{AIR_PLAUSIBLE_HU[1]:g}; '
                                 f'not air, or the HU scale is broken')
  if not FAT_PLAUSIBLE_HU[0] <= fat <= FAT_PLAUSIBLE_HU[1]:
    raise CalibrationError(path, f'calibration: subcutaneous fat reads {fat:.0f} HU, not '
                                 f'within {FAT_PLAUSIBLE_HU[0]:g}..{FAT_PLAUSIBLE_HU[1]:g}')
  slope = (FAT_HU - AIR_HU) / (fat - air)
  if not SLOPE_RANGE[0] <= slope <= SLOPE_RANGE[1]:
    raise CalibrationError(path, f'calibration: fat ({fat:.0f} HU) and air ({air:.0f} HU) give '
                                 f'slope {slope:.3f}, outside {SLOPE_RANGE[0]:g}..'
                                 f'{SLOPE_RANGE[1]:g}: the references are not what they seem')
  return dict(air_hu=round(air, 2), fat_hu=round(fat, 2), air_voxels=int(len(air_v)),
              fat_voxels=n_fat, slope=round(slope, 6), intercept=round(AIR_HU - slope * air, 4),
              nominal_air_hu=AIR_HU, nominal_fat_hu=FAT_HU, slices=len(slices))


def apply(ct: sitk.Image, slope: float, intercept: float) -> sitk.Image:
  """slope * HU + intercept as a float32 image on the CT's grid."""
  return sitk.Cast(ct, sitk.sitkFloat32) * float(slope) + float(intercept)


def calibrate(ct: sitk.Image, mask: sitk.Image, path: str):
  """(calibrated CT (float32), the measure() record)."""
  rec = measure(ct, mask, path)
  return apply(ct, rec['slope'], rec['intercept']), rec
