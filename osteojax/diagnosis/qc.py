"""Quality gates per vertebra of a CT + label mask, before the model reads it.

Each gate that fires adds {'gate': name, 'detail': one line} to the vertebra's `qc` list:

  border       the vertebra's mask touches a face of the image: the scan (or the mask) cuts
               it, so its ROI and its size are incomplete;
  few_voxels   the mask holds less than MIN_VERTEBRA_ML of it (a fragment, a stray label), or
               none of it lands on the model's ROI grid (the model then reads an empty input);
  level_order  the level sequence disagrees with the anatomy: vertebral bodies grow caudally
               (T1 -> L5), so a vertebra whose volume is below LEVEL_VOLUME_RATIO of its cranial
               neighbour's (the level above, when the mask has it) flags a transitional or
               mislabelled vertebra; so does a vertebra lying above its cranial neighbour.
               Pairs where either vertebra touches the border are not compared (a cut vertebra
               is small for a known reason);
  roi_outside  more than ROI_OUTSIDE_FRACTION of the model's ROI (the resampling grid around
               the vertebra) lies outside the CT and reads as -1024 HU there: the model never
               saw such a cut (generated ROIs always hold their neighbours).

A flagged vertebra is still predicted and listed, marked `qc_pass: false`; patient-level
summaries leave it out (predict.patient_summary).
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from osteojax.data import extract
from osteojax.data import params as P

MIN_VERTEBRA_ML = 2.0           # a T1 body is ~4.4 ml (Panjabi sizes, params.SIZE_ANCHORS);
                                # whole-vertebra masks (TotalSegmentator) are larger
LEVEL_VOLUME_RATIO = 0.8        # caudal / cranial body volume below this: flagged. The
                                # generator's (Panjabi) ratios are 1.00-1.17 between neighbours
ROI_OUTSIDE_FRACTION = 0.10     # of the ROI's voxels outside the CT


def label_boxes(mask: sitk.Image) -> dict:
  """{label: (index start (x, y, z), size (x, y, z))} bounding boxes of a label image."""
  stats = sitk.LabelShapeStatisticsImageFilter()
  stats.ComputePerimeterOff()
  stats.Execute(mask)
  return {int(v): (stats.GetBoundingBox(v)[:3], stats.GetBoundingBox(v)[3:])
          for v in stats.GetLabels()}


def touches_border(box, size) -> list:
  """The image faces ('x-', 'z+', ...) that a bounding box (start, extent) touches."""
  start, extent = box
  faces = []
  for a, name in enumerate('xyz'):
    if start[a] == 0:
      faces.append(f'{name}-')
    if start[a] + extent[a] >= size[a]:
      faces.append(f'{name}+')
  return faces


def roi_outside_fraction(ct: sitk.Image, center, geometry: P.RoiGeometry) -> float:
  """Fraction of the ROI grid's voxel centres (extract.roi_reference) outside the CT's voxels."""
  ref = extract.roi_reference(center, geometry)
  size = np.array(ref.GetSize())
  grid = np.stack(np.meshgrid(*[np.arange(n) for n in size], indexing='ij'), -1).reshape(-1, 3)
  pts = np.asarray(ref.GetOrigin()) + grid * np.asarray(ref.GetSpacing())  # identity direction
  m = np.asarray(ct.GetDirection()).reshape(3, 3) * np.asarray(ct.GetSpacing())
  idx = np.linalg.solve(m, (pts - np.asarray(ct.GetOrigin())).T).T
  inside = ((idx >= -0.5) & (idx <= np.asarray(ct.GetSize()) - 0.5)).all(1)
  return float(1.0 - inside.mean())


def gates(ct: sitk.Image, mask: sitk.Image, verts: list, geometry: P.RoiGeometry) -> None:
  """Fill each vertebra's `qc` list and `qc_pass` in place.

  verts: dicts with level, label, center_mm (physical (x, y, z)), voxels, as predict makes them.
  """
  boxes = label_boxes(mask)
  voxel_ml = float(np.prod(ct.GetSpacing())) / 1000.0
  for v in verts:
    v['qc'] = []
    v['volume_ml'] = round(v['voxels'] * voxel_ml, 2)
    faces = touches_border(boxes[v['label']], ct.GetSize())
    if faces:
      v['qc'].append(dict(gate='border',
                          detail=f'mask touches the image border ({", ".join(faces)})'))
    if v['volume_ml'] < MIN_VERTEBRA_ML or v.get('roi_voxels') == 0:
      empty = ('; none on the model\'s ROI grid (its input is empty)'
               if v.get('roi_voxels') == 0 else '')
      v['qc'].append(dict(gate='few_voxels', detail=f'{v["voxels"]} voxels = {v["volume_ml"]:g} ml'
                                                    f' < {MIN_VERTEBRA_ML:g} ml{empty}'))
    out = roi_outside_fraction(ct, v['center_mm'], geometry)
    v['roi_outside_fraction'] = round(out, 3)
    if out > ROI_OUTSIDE_FRACTION:
      v['qc'].append(dict(gate='roi_outside', detail=f'{100 * out:.0f}% of the ROI lies outside '
                                                     f'the CT (> {100 * ROI_OUTSIDE_FRACTION:g}%)'))
  by_level = {v['level']: v for v in verts}
  for v in verts:
    i = P.LEVEL_INDEX[v['level']]
    up = by_level.get(P.LEVELS[i - 1]) if i > 0 else None
    if up is None or any(q['gate'] == 'border' for q in up['qc'] + v['qc']):
      continue
    if v['center_mm'][2] >= up['center_mm'][2]:          # physical z runs superior
      v['qc'].append(dict(gate='level_order', detail=f'lies above its cranial neighbour '
                                                     f'{up["level"]}: labels out of order'))
    elif v['volume_ml'] < LEVEL_VOLUME_RATIO * up['volume_ml']:
      v['qc'].append(dict(gate='level_order', detail=f'{v["volume_ml"]:g} ml, '
                                                     f'{v["volume_ml"] / up["volume_ml"]:.2f} x '
                                                     f'its cranial neighbour {up["level"]} '
                                                     f'(< {LEVEL_VOLUME_RATIO:g}): transitional '
                                                     f'or mislabelled vertebra?'))
  for v in verts:
    v['qc_pass'] = not v['qc']
