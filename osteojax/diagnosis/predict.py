"""Predict on a CT: per vertebra BMD, T-score on each DXA device, WHO class, P(osteoporosis).

For every labeled vertebra of a CT's mask (VerSe or TotalSegmentator numbering) the ROI is cut
exactly as tools/extract_rois.py cuts training data (osteojax/data/extract.py, the model's ROI
geometry from its config), normalised as the pool's original channel, and run through a
fine-tuned model (osteojax/diagnosis/finetune.py) once per DXA device: the device enters the MoE gate,
so the model answers "what would this vertebra read on a Hologic / GE Lunar / MEDIX scanner".
BMD comes back in each device's g/cm^2 (the training split's per-device statistics); the
T-score uses that maker's young-adult reference for the given sex (osteojax/data/cohort.py);
WHO class: T >= -1 normal, -2.5 < T < -1 osteopenia, T <= -2.5 osteoporosis. DXA measures L1-L4
only (the labels the model learnt): other levels get the model's BMD and probability, no T-score
(null, WHO class 'no DXA reference') and `dxa_level: false`.
"""
from __future__ import annotations

import json
import os

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

from osteojax.diagnosis import finetune  # noqa: E402
from osteojax.data import cohort, extract, io, labels  # noqa: E402
from osteojax.data import params as P  # noqa: E402
from osteojax.texture import pool as pool_lib  # noqa: E402

SEXES = ('F', 'M')


def who_class(t: float) -> str:
  if not np.isfinite(t):
    return 'no DXA reference'
  return 'normal' if t >= -1.0 else ('osteoporosis' if t <= -2.5 else 'osteopenia')


def vertebra_inputs(ct_path: str, mask_path: str, convention: str, geometry: P.RoiGeometry):
  """(list of dict(level, label, center_mm, voxels), inputs [V, D, H, W]) of a CT + mask."""
  ct = io.read_image(ct_path)
  io.check_ct(ct, ct_path)
  mask = io.check_mask(io.read_image(mask_path), mask_path)
  io.check_geometry(ct, mask, ct_path, mask_path)
  found, xs = [], []
  for value, (center, n) in sorted(extract.vertebra_centroids(mask).items()):
    try:
      level = labels.label_to_level(value, convention)
    except labels.LabelError as e:
      raise io.OsteoDataError(mask_path, str(e)) from None
    if level not in P.LEVEL_INDEX:
      continue                      # sacrum, coccyx: no vertebra level of the model
    roi_ct, roi_mask = extract.cut_roi(ct, mask, value, center, geometry)
    hu = sitk.GetArrayFromImage(roi_ct).astype(np.float32)
    m = sitk.GetArrayFromImage(roi_mask)
    if not m.any():
      raise io.OsteoDataError(mask_path, f'vertebra {level} (label {value}) leaves the ROI empty')
    maps = np.zeros((4,) + hu.shape, np.float32)     # only the original channel is used
    xs.append(np.asarray(pool_lib.normalize_pool(hu, maps, m))[0])
    found.append(dict(level=level, label=int(value), center_mm=[round(float(c), 2) for c in center],
                      voxels=int(n)))
  if not found:
    raise io.OsteoDataError(mask_path, f'no vertebra T1..L6 in the {convention} numbering')
  return found, np.stack(xs)


def predict_ct(ct_path: str, mask_path: str, workdir: str, convention: str, sex: str):
  """(report, inputs): the per-vertebra report (JSON-ready) and the ROIs [V, D, H, W]."""
  if sex not in SEXES:
    raise ValueError(f'sex {sex!r}: want F or M (the T-score reference depends on it)')
  try:
    config, model, variables, stats = finetune.load(workdir)
  except (FileNotFoundError, ValueError) as e:
    raise io.OsteoDataError(workdir, str(e).replace(f'{workdir}: ', '')) from None
  geometry = P.RoiGeometry(shape=tuple(config.data.roi_shape),
                           spacing_mm=float(config.data.spacing_mm))
  verts, x = vertebra_inputs(ct_path, mask_path, convention, geometry)
  devices = [d for d in finetune.DEVICES if d in stats]
  v = len(verts)
  images = np.repeat(x, len(devices), axis=0)
  dev_names = [d for _ in range(v) for d in devices]
  out = finetune.predict(model, variables, images, finetune.device_index(dev_names))
  bmd = finetune.unstandardise_bmd(out['bmd_z'], dev_names, stats)
  for i, vert in enumerate(verts):
    vert['dxa_level'] = vert['level'] in P.LABELED_LEVELS
    vert['level_pred'] = P.LEVELS[int(out['level'][i * len(devices)])]
    vert['devices'] = {}
    for j, d in enumerate(devices):
      k = i * len(devices) + j
      t = (float(cohort.t_score(d, bmd[k], sex, vert['level'])) if vert['dxa_level']
           else float('nan'))
      vert['devices'][d] = dict(bmd=round(float(bmd[k]), 4),
                                t_score=round(t, 2) if np.isfinite(t) else None,
                                who_class=who_class(t), p_osteoporosis=round(float(out['prob'][k]), 4))
  return dict(ct=ct_path, mask=mask_path, checkpoint=os.path.abspath(workdir), sex=sex,
              label_convention=convention, roi_shape=list(geometry.shape),
              roi_spacing_mm=geometry.spacing_mm, devices=devices, vertebrae=verts,
              note='Model output on CT; a research tool, not a diagnosis.'), x


def plot_report(report: dict, x: np.ndarray, path: str) -> str:
  """One page: each vertebra's mid-sagittal ROI slice and its per-device T-scores."""
  verts = report['vertebrae']
  n = len(verts)
  fig = plt.figure(figsize=(11, 2.2 + 1.9 * n))
  gs = fig.add_gridspec(n + 1, 2, width_ratios=[1, 3], height_ratios=[0.6] + [1] * n)
  ax = fig.add_subplot(gs[0, :])
  ax.axis('off')
  ax.text(0, 0.5, f'{os.path.basename(report["ct"])}  |  sex {report["sex"]}  |  checkpoint '
          f'{report["checkpoint"]}\n{report["note"]}', fontsize=9, va='center')
  colors = {'normal': '#4c9a2a', 'osteopenia': '#e0a800', 'osteoporosis': '#c0392b',
            'no DXA reference': '#888888'}
  for i, vert in enumerate(verts):
    a = fig.add_subplot(gs[i + 1, 0])
    a.imshow(x[i][:, :, x.shape[3] // 2], cmap='gray', origin='lower', vmin=0, vmax=1)
    a.set_title(f'{vert["level"]} (model: {vert["level_pred"]})', fontsize=9)
    a.axis('off')
    b = fig.add_subplot(gs[i + 1, 1])
    names = list(vert['devices'])
    ts = [vert['devices'][d]['t_score'] or 0.0 for d in names]
    b.barh(names, ts, color=[colors[vert['devices'][d]['who_class']] for d in names])
    b.axvline(-1.0, color='k', lw=0.6, ls='--')
    b.axvline(-2.5, color='k', lw=0.8)
    b.set_xlim(-5, 3)
    for k, d in enumerate(names):
      r = vert['devices'][d]
      t = 'T  n/a' if r['t_score'] is None else f'T {r["t_score"]:+.1f}'
      b.text(2.9, k, f'BMD {r["bmd"]:.3f}  {t}  {r["who_class"]}  '
             f'P(op) {r["p_osteoporosis"]:.2f}', ha='right', va='center', fontsize=8)
    b.set_xlabel('T-score' if i == n - 1 else '')
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def write_report(report: dict, x: np.ndarray, out_dir: str) -> tuple[str, str]:
  os.makedirs(out_dir, exist_ok=True)
  js = os.path.join(out_dir, 'prediction.json')
  io.atomic_write_text(js, json.dumps(report, indent=1))
  return js, plot_report(report, x, os.path.join(out_dir, 'prediction.png'))
