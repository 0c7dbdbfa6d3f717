"""Real CT -> vertebra ROIs in the generator's layout, so real and generated data train alike.

For each manifest row (one vertebra: io.read_real_manifest) the vertebra's label in the mask
(VerSe or TotalSegmentator numbering, `labels.py`) gives its centroid in physical space; the ROI
is the params.RoiGeometry grid (shape (z, y, x), isotropic spacing) centred there with identity
direction, i.e. axes along the patient's LPS axes. Its array [z, y, x] then runs inferior ->
superior, anterior -> posterior and right -> left, as the generated ROIs do (phantom.render_roi:
z superior, y posterior). The CT is resampled linearly (outside: -1024 HU) and stored as int16
HU; the mask by nearest neighbour, keeping that vertebra only, as uint8 {0, 1}.

Output folder (written whole or not at all, io.staged_dir):
  manifest.csv   cohort.MANIFEST_COLUMNS + path, mask_path, spacing_z/y/x (osteosim layout;
                 truth columns NaN; t_score from the row's device where sex is known and the level
                 has a DXA reference (L1-L4); label = t_score <= -2.5 where computable)
  extract.json   the source manifest, label convention, geometry and every ROI's centre
  rois/<site>/<roi_id>.nii.gz, <roi_id>_mask.nii.gz   (ROI origin = its physical position)
"""
from __future__ import annotations

import dataclasses
import json
import os
import re

import numpy as np
import pandas as pd
import SimpleITK as sitk

from osteojax.data import cohort, io, labels, osteosim
from osteojax.data import params as P

INFO = 'extract.json'


def vertebra_centroids(mask: sitk.Image) -> dict:
  """{label value: (physical centroid (x, y, z) mm as float64 [3], voxel count)} of a mask.

  mask: an integer label image (any direction); every non-zero value is one label.
  """
  stats = sitk.LabelShapeStatisticsImageFilter()
  stats.ComputePerimeterOff()
  stats.Execute(mask)
  return {int(v): (np.array(stats.GetCentroid(v)), int(stats.GetNumberOfPixels(v)))
          for v in stats.GetLabels()}


def roi_reference(center, geometry: P.RoiGeometry) -> sitk.Image:
  """An empty image on the ROI grid: geometry.shape [z, y, x], identity direction, centred at
  `center` (physical (x, y, z) mm, i.e. at continuous index (shape - 1) / 2)."""
  size = [int(n) for n in geometry.shape[::-1]]
  spacing = np.full(3, float(geometry.spacing_mm))
  origin = np.asarray(center, float) - spacing * (np.array(size) - 1) / 2
  ref = sitk.Image(size, sitk.sitkUInt8)
  ref.SetSpacing(tuple(spacing))
  ref.SetOrigin(tuple(origin))
  ref.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
  return ref


def cut_roi(ct: sitk.Image, mask: sitk.Image, label: int, center, geometry: P.RoiGeometry):
  """ROI of one vertebra: (CT int16 HU image, uint8 mask image of `label` only), same grid.

  CT: linear interpolation, -1024 outside the scan; mask: nearest neighbour, 0 outside.
  """
  ref = roi_reference(center, geometry)
  hu = sitk.Resample(ct, ref, sitk.Transform(), sitk.sitkLinear, -1024.0, sitk.sitkFloat32)
  hu_arr = np.clip(np.round(sitk.GetArrayViewFromImage(hu)), -1024, 3071).astype(np.int16)
  lab = sitk.Resample(mask, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                      mask.GetPixelID())
  m_arr = (sitk.GetArrayViewFromImage(lab) == label).astype(np.uint8)
  out = []
  for arr in (hu_arr, m_arr):
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(ref)
    out.append(img)
  return tuple(out)


def _safe(name):
  """A file-name-safe version of a patient or site id."""
  return re.sub(r'[^A-Za-z0-9._-]', '_', name)


def manifest_row(r, path, mask_path, spacing_mm):
  """The osteosim manifest row (dict over MANIFEST_COLUMNS + PATH_COLUMNS) of one real row."""
  out = {c: np.nan for c in cohort.MANIFEST_COLUMNS + osteosim.PATH_COLUMNS}
  bmd, device, sex, level = r['bmd'], r['device'], r['sex'], r['level']
  labelled = not np.isnan(bmd)
  out.update(roi_id=f'{r["patient"]}-{level}', patient_id=r['patient'], site=r['site'],
             split=r['split'] or ('test' if labelled else 'pretrain'), device=device,
             scanner=r['scanner'], level=level, level_index=P.LEVEL_INDEX[level],
             age=r['age'], sex=sex or np.nan, path=path, mask_path=mask_path,
             spacing_z=spacing_mm, spacing_y=spacing_mm, spacing_x=spacing_mm)
  if labelled:
    out['bmd'] = out[f'bmd_{device}'] = bmd
    if sex and level in P.ABMD_LEVEL_RATIO:
      t = float(cohort.t_score(device, bmd, sex, level))
      out['t_score'] = out[f't_{device}'] = t
      out['label'] = out[f'label_{device}'] = int(t <= P.OSTEOPOROSIS_T)
  return out


def _as_manifest(rows):
  df = pd.DataFrame(rows, columns=cohort.MANIFEST_COLUMNS + osteosim.PATH_COLUMNS)
  for c in ['label'] + [f'label_{d}' for d in P.DEVICE_NAMES]:
    df[c] = df[c].astype('Int64')
  return df


def check_levels(df, manifest_path, convention):
  """Label value of every row's level in `convention`: int [N]; OsteoDataError if one has none."""
  try:
    labels.label_map(convention)
  except labels.LabelError as e:
    raise io.OsteoDataError(manifest_path, str(e)) from None
  values = []
  for r in df.to_dict('records'):
    try:
      values.append(labels.level_to_label(r['level'], convention))
    except labels.LabelError as e:
      raise io.OsteoDataError(manifest_path, f'line {r["line"]}: {e}') from None
  return np.array(values, int)


def extract_rois(manifest_path, out_dir, convention, geometry: P.RoiGeometry = P.RoiGeometry(),
                 log=None) -> pd.DataFrame:
  """Cut every vertebra of a real-data manifest into out_dir; returns the written manifest.

  convention: 'verse' or 'totalseg'. log: optional callable(str) for progress lines.
  Raises io.OsteoDataError (and leaves out_dir untouched) on the first bad input.
  """
  df = io.read_real_manifest(manifest_path)
  values = check_levels(df, manifest_path, convention)
  df['label_value'] = values
  df['roi_id'] = [f'{p}-{lev}' for p, lev in zip(df['patient'], df['level'])]
  df['rel'] = [f'rois/{_safe(s)}/{_safe(r)}' for s, r in zip(df['site'], df['roi_id'])]
  dup = df['rel'].duplicated()
  if dup.any():
    raise io.OsteoDataError(manifest_path, f'line {df["line"][dup].iloc[0]}: ROI file name '
                                           f'{df["rel"][dup].iloc[0]} is taken by another row')
  rows, centres = [], {}
  with io.staged_dir(out_dir, INFO) as tmp:
    groups = list(df.groupby(['ct_path', 'mask_path'], sort=False))
    for g, ((ct_path, mask_path), sub) in enumerate(groups):
      ct = io.read_image(ct_path)
      io.check_ct(ct, ct_path)
      mask = io.read_image(mask_path)
      io.check_geometry(ct, mask, ct_path, mask_path)
      mask = io.check_mask(mask, mask_path)
      found = vertebra_centroids(mask)
      for r in sub.to_dict('records'):
        value = r['label_value']
        if value not in found:
          present = ', '.join(str(v) for v in sorted(found))
          raise io.OsteoDataError(mask_path, f'label {value} ({r["level"]}, {convention}) is '
                                             f'absent; labels present: {present}')
        center, voxels = found[value]
        hu, m = cut_roi(ct, mask, value, center, geometry)
        roi_id, rel = r['roi_id'], r['rel']
        os.makedirs(os.path.join(tmp, os.path.dirname(rel)), exist_ok=True)
        sitk.WriteImage(hu, os.path.join(tmp, rel + '.nii.gz'), useCompression=True)
        sitk.WriteImage(m, os.path.join(tmp, rel + '_mask.nii.gz'), useCompression=True)
        rows.append(manifest_row(r, rel + '.nii.gz', rel + '_mask.nii.gz', geometry.spacing_mm))
        centres[roi_id] = dict(center=[float(c) for c in center], label=int(value),
                               voxels=voxels, ct_path=ct_path, mask_path=mask_path)
      if log:
        log(f'[extract] {g + 1}/{len(groups)} {os.path.basename(ct_path)}: {len(sub)} ROIs')
    out = _as_manifest(rows)
    out.to_csv(os.path.join(tmp, osteosim.MANIFEST), index=False)
    info = dict(source=os.path.abspath(str(manifest_path)), convention=convention,
                geometry=dataclasses.asdict(geometry), n_rois=len(out), rois=centres)
    with open(os.path.join(tmp, INFO), 'w', encoding='utf-8') as f:
      json.dump(info, f, indent=1)
  return out
