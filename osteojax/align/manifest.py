"""Your own DXA / MRI pairs: a manifest CSV -> arrays on one pixel spacing and a fixed canvas.

One row per subject:

  subject, split, dxa_<channel>..., mri_<channel>...   [dxa_mask, mri_mask,
                                                       dxa_keypoints, mri_keypoints]

- split: train, val or test.
- dxa_<channel> / mri_<channel>: one column per channel the aligner uses (config.model
  dxa_channels / mri_channels, e.g. dxa_bone, dxa_tissue, mri_fat, mri_water): a 2-D image
  file SimpleITK reads (NIfTI, NRRD, MetaImage, a DICOM file) or a DICOM series folder. The
  channels of one scan must share one grid (size, spacing, origin).
- dxa_mask / mri_mask (optional): label images on the grids of their scans.
- dxa_keypoints / mri_keypoints (optional): a JSON list of [x, y] physical points (mm, the
  image's own coordinates) in bodysim.KEYPOINTS order, for keypoint-error evaluation.

Every scan is resampled (linear; masks nearest) to `spacing_mm` keeping its physical extent
(the authors' interpolation with align_corners=False), then padded with zeros or cropped,
centred, onto the modality's canvas (the authors' pad_to_size). Keypoints follow the same
maps. Relative paths are relative to the manifest's folder. Bad input raises OsteoDataError
with one line naming the file and the problem; nothing is written.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import SimpleITK as sitk

from osteojax.data import bodysim, io
from osteojax.data.io import OsteoDataError

SPLITS = ('train', 'val', 'test')
NO_SPACING = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.tif', '.tiff')
PATIENT_ID = '0010|0020'


def read_manifest(path: str, dxa_channels, mri_channels) -> pd.DataFrame:
  """The manifest as a table, its columns and rows checked."""
  need = ['subject', 'split'] + [f'dxa_{c}' for c in dxa_channels] + \
      [f'mri_{c}' for c in mri_channels]
  df = io.read_csv_table(path, need, kind='manifest file',
                         needs=f'needs subject, split and a column per channel of the aligner: '
                               f'{", ".join(need[2:])}')
  dup = df.subject[df.subject.duplicated()].tolist()
  if dup:
    raise OsteoDataError(path, f'subject {dup[0]!r} appears more than once')
  bad = sorted(set(df.split) - set(SPLITS))
  if bad:
    raise OsteoDataError(path, f'unknown split {bad[0]!r} (use {", ".join(SPLITS)})')
  for _, row in df.iterrows():
    for col in need[2:]:
      if not row[col].strip():
        raise OsteoDataError(path, f'subject {row.subject!r}: no {col} (missing channel)')
  return df


def _patient_id(path: str) -> str:
  """The DICOM PatientID of a file, or of the first file of a series folder ('' if none)."""
  reader = sitk.ImageFileReader()
  reader.SetFileName(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(path)[0]
                     if os.path.isdir(path) else path)
  reader.ReadImageInformation()
  return reader.GetMetaData(PATIENT_ID).strip() if reader.HasMetaDataKey(PATIENT_ID) else ''


def read_image(path: str) -> tuple[sitk.Image, str]:
  """(a 2-D image, its DICOM PatientID or ''), read by osteojax.data.io.read_file (a folder is
  a DICOM series); a single-slice 3-D image is squeezed."""
  if os.path.splitext(path)[1].lower() in NO_SPACING:
    raise OsteoDataError(path, 'this format stores no pixel spacing; convert to NIfTI, NRRD '
                               'or DICOM with the spacing set')
  img = io.read_file(path)
  if img.GetDimension() == 3 and img.GetSize()[2] == 1:
    img = img[:, :, 0]
  if img.GetDimension() != 2:
    raise OsteoDataError(path, f'expected a 2-D scan, got size {img.GetSize()}')
  if img.GetNumberOfComponentsPerPixel() != 1:
    raise OsteoDataError(path, f'{img.GetNumberOfComponentsPerPixel()} components per pixel; '
                               f'give one file per channel')
  sp = np.asarray(img.GetSpacing(), float)
  if not (np.all(np.isfinite(sp)) and np.all(sp > 0)):
    raise OsteoDataError(path, f'pixel spacing {tuple(sp)} is absent or invalid')
  return img, _patient_id(path)


def resample(img: sitk.Image, spacing: float, labels: bool = False) -> sitk.Image:
  """img on an isotropic `spacing` grid over the same physical extent (axes kept); a scan
  already on that spacing is only cast (no interpolation)."""
  old_sp = np.asarray(img.GetSpacing(), float)
  if np.allclose(old_sp, spacing, rtol=1e-6, atol=0):
    return sitk.Cast(img, sitk.sitkUInt8 if labels else sitk.sitkFloat32)
  size = [max(int(round(n * s / spacing)), 1) for n, s in zip(img.GetSize(), old_sp)]
  d = np.asarray(img.GetDirection(), float).reshape(2, 2)
  origin = np.asarray(img.GetOrigin(), float) + d @ ((spacing - old_sp) / 2)
  interp = sitk.sitkNearestNeighbor if labels else sitk.sitkLinear
  out = sitk.Resample(img, size, sitk.Transform(), interp, origin.tolist(), (spacing, spacing),
                      img.GetDirection(), 0.0, sitk.sitkUInt8 if labels else sitk.sitkFloat32)
  return out


def place(arr: np.ndarray, canvas) -> tuple[np.ndarray, tuple[int, int]]:
  """Centred zero-pad / crop of [H, W, ...] onto canvas (Hc, Wc); -> (array, (top, left)) with
  pixel (r, c) of arr at (r + top, c + left) of the result."""
  out = np.zeros(tuple(canvas) + arr.shape[2:], arr.dtype)
  offs = []
  src, dst = [], []
  for n, m in zip(arr.shape[:2], canvas):
    o = (m - n) // 2 if m >= n else -((n - m) // 2)
    offs.append(o)
    src.append(slice(max(-o, 0), max(-o, 0) + min(n, m)))
    dst.append(slice(max(o, 0), max(o, 0) + min(n, m)))
  out[dst[0], dst[1]] = arr[src[0], src[1]]
  return out, (offs[0], offs[1])


def _read_points(path: str) -> np.ndarray:
  """The physical [x, y] points of a keypoints JSON file, one per bodysim.KEYPOINTS."""
  try:
    with open(path, encoding='utf-8') as f:
      pts = np.asarray(json.load(f), float)
  except (OSError, ValueError) as e:
    raise OsteoDataError(path, f'not a JSON list of [x, y] points ({e})') from None
  if pts.shape != (len(bodysim.KEYPOINTS), 2):
    raise OsteoDataError(path, f'expected {len(bodysim.KEYPOINTS)} [x, y] points '
                               f'({", ".join(bodysim.KEYPOINTS)}), got shape {pts.shape}')
  return pts


def _keypoints(pts: np.ndarray, grid: sitk.Image, offset) -> np.ndarray:
  """Physical [x, y] points -> (row, col) canvas pixels of the resampled grid."""
  idx = np.array([grid.TransformPhysicalPointToContinuousIndex(p.tolist()) for p in pts])
  return np.stack([idx[:, 1] + offset[0], idx[:, 0] + offset[1]], axis=1)


def _read_scan(row, modality: str, channels, base: str):
  """One scan's files read and checked: (channel images on one grid, its mask image or None,
  its keypoints [x, y] or None, its DICOM PatientID or '')."""
  path = lambda col: os.path.join(base, row[col].strip())
  read = [read_image(path(f'{modality}_{c}')) for c in channels]
  imgs = [img for img, _ in read]
  ref = imgs[0]
  for c, im in zip(channels[1:], imgs[1:]):
    if (im.GetSize() != ref.GetSize() or not np.allclose(im.GetSpacing(), ref.GetSpacing())
        or not np.allclose(im.GetOrigin(), ref.GetOrigin())):
      raise OsteoDataError(path(f'{modality}_{c}'), f'its grid differs from the '
                           f'{modality.upper()} {channels[0]} channel of subject {row.subject!r}')
  mask = pts = None
  if row.get(f'{modality}_mask', '').strip():
    mask, _ = read_image(path(f'{modality}_mask'))
    if mask.GetSize() != ref.GetSize():
      raise OsteoDataError(path(f'{modality}_mask'), f'size {mask.GetSize()} differs from its '
                           f'scan\'s {ref.GetSize()}')
  if row.get(f'{modality}_keypoints', '').strip():
    pts = _read_points(path(f'{modality}_keypoints'))
  return imgs, mask, pts, read[0][1]


def _same_patient(path: str, row, dxa_id: str, mri_id: str) -> None:
  if dxa_id and mri_id and dxa_id != mri_id:
    raise OsteoDataError(path, f'subject {row.subject!r}: the DXA is of patient {dxa_id!r} but '
                               f'the MRI of patient {mri_id!r}')


def _scan(row, modality: str, channels, spacing: float, canvas, base: str):
  """One scan's channels [Hc, Wc, C], its mask, keypoints and PatientID."""
  imgs, m, pts, pid = _read_scan(row, modality, channels, base)
  grids = [resample(im, spacing) for im in imgs]
  arr = np.stack([sitk.GetArrayFromImage(g) for g in grids], axis=-1).astype(np.float32)
  if not np.isfinite(arr).all():
    raise OsteoDataError(os.path.join(base, row[f'{modality}_{channels[0]}'].strip()),
                         'NaN or infinite pixels')
  arr, offset = place(arr, canvas)
  mask = np.zeros(tuple(canvas), np.uint8)
  if m is not None:
    mask = place(sitk.GetArrayFromImage(resample(m, spacing, labels=True)), canvas)[0]
  kp = np.full((len(bodysim.KEYPOINTS), 2), np.nan)
  if pts is not None:
    kp = _keypoints(pts, grids[0], offset)
  return arr, mask, kp, pid


def check(path: str, dxa_channels, mri_channels) -> None:
  """Every file the manifest names read and checked (every split), as load would read it, so
  that a bad file stops a run before it writes anything: OsteoDataError, one line, for the
  first problem. Reads each image once more than load does (2-D scans: quick)."""
  dxa_channels, mri_channels = tuple(dxa_channels), tuple(mri_channels)
  df = read_manifest(path, dxa_channels, mri_channels)
  base = os.path.dirname(os.path.abspath(path))
  for _, row in df.iterrows():
    dxa_id = _read_scan(row, 'dxa', dxa_channels, base)[-1]
    mri_id = _read_scan(row, 'mri', mri_channels, base)[-1]
    _same_patient(path, row, dxa_id, mri_id)


def load(path: str, split: str, dxa_channels, mri_channels, spacing_mm: float, dxa_canvas,
         mri_canvas, limit: int | None = None) -> dict:
  """The manifest's `split` as bodysim.load_pairs returns a BodySim split (without the
  alignment truth, which real pairs do not have): dxa [N, H, W, Cd], mri [N, h, w, Cm],
  dxa_mask / mri_mask (zeros where not given), keypoints_dxa / keypoints_mri [N, 5, 2] (row,
  col; NaN where not given), ids, spacing_mm, and the channel names."""
  dxa_channels, mri_channels = tuple(dxa_channels), tuple(mri_channels)
  df = read_manifest(path, dxa_channels, mri_channels)
  rows = df[df.split == split]
  if rows.empty:
    raise OsteoDataError(path, f'no subjects in split {split!r}')
  rows = rows.iloc[:limit] if limit else rows
  base = os.path.dirname(os.path.abspath(path))
  out = {k: [] for k in ('dxa', 'mri', 'dxa_mask', 'mri_mask', 'keypoints_dxa',
                         'keypoints_mri')}
  for _, row in rows.iterrows():
    d, dm, dk, dp = _scan(row, 'dxa', dxa_channels, spacing_mm, dxa_canvas, base)
    m, mm, mk, mp = _scan(row, 'mri', mri_channels, spacing_mm, mri_canvas, base)
    _same_patient(path, row, dp, mp)
    for k, v in zip(out, (d, m, dm, mm, dk, mk)):
      out[k].append(v)
  res = {k: np.stack(v) for k, v in out.items()}
  res.update(ids=rows.subject.tolist(), spacing_mm=float(spacing_mm),
             dxa_channels=dxa_channels, mri_channels=mri_channels, truth=None)
  return res
