"""OsteoSim writer: cohort table -> NIfTI ROIs + manifest, streamed, parallel, resumable.

Layout of a generated data set (`out_dir`):
  manifest.csv            one row per ROI: the whole truth (cohort.MANIFEST_COLUMNS) + paths
  osteosim.json           what made it: parameter digest, scale, seed, geometry, counts
  rois/<site>/<roi_id>.nii.gz, <roi_id>_mask.nii.gz   int16 HU and uint8 body mask, with spacing

The data set is built in `<out_dir>.partial` and renamed when complete, so `out_dir` is either
whole or absent. Every ROI is a function of (seed, roi index) alone and is written atomically,
so a killed run resumes where it stopped and the result does not depend on the worker count.
"""
from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import os
import shutil
import time

import numpy as np
import pandas as pd
import SimpleITK as sitk

from osteojax import progress as prog
from osteojax.data import cohort, io, phantom
from osteojax.data import params as P

MANIFEST = 'manifest.csv'
INFO = 'osteosim.json'
PATH_COLUMNS = ['path', 'mask_path', 'spacing_z', 'spacing_y', 'spacing_x']


def write_image_atomic(img, path):
  """Write a SimpleITK image (compressed) atomically (io.atomic_path)."""
  with io.atomic_path(path) as tmp:
    sitk.WriteImage(img, tmp, useCompression=True)


def write_csv_atomic(df: pd.DataFrame, path):
  with io.atomic_path(path) as tmp:
    df.to_csv(tmp, index=False)


def _render_one(args):
  index, row, geometry, seed, root = args
  img_path = os.path.join(root, row['path'])
  mask_path = os.path.join(root, row['mask_path'])
  if os.path.exists(img_path) and os.path.exists(mask_path):
    return index  # done by an earlier, interrupted run
  ct, mask = phantom.render_roi(row, geometry, np.random.default_rng([seed, 1, index]))
  spacing = (geometry.spacing_mm,) * 3
  os.makedirs(os.path.dirname(img_path), exist_ok=True)
  write_image_atomic(phantom.to_image(mask, spacing), mask_path)
  write_image_atomic(phantom.to_image(ct, spacing), img_path)
  return index


def _info(scale, seed, geometry, labeled_scale=None, cohort_name='paper'):
  info = dict(generator='osteosim', params_digest=P.params_digest(), scale=scale, seed=seed,
              cohort=cohort_name, geometry=dataclasses.asdict(geometry))
  if labeled_scale is not None and labeled_scale != scale:
    info['labeled_scale'] = labeled_scale
  return json.loads(json.dumps(info))  # the form it takes once read back from disk


def is_current(out_dir, scale, seed, geometry, labeled_scale=None,
               cohort_name: str = 'paper') -> bool:
  """True when out_dir already holds the data set these arguments would make."""
  path = os.path.join(out_dir, INFO)
  if not (os.path.exists(path) and os.path.exists(os.path.join(out_dir, MANIFEST))):
    return False
  with open(path, encoding='utf-8') as f:
    info = json.load(f)
  want = _info(scale, seed, geometry, labeled_scale, cohort_name)
  return all(info.get(k) == v for k, v in want.items()) and \
      info.get('labeled_scale') == want.get('labeled_scale')


def generate(out_dir: str, scale: float = 0.05, seed: int = 0,
             geometry: P.RoiGeometry = P.RoiGeometry(), workers: int = 0,
             progress: bool = True, labeled_scale: float | None = None,
             cohort_name: str = 'paper') -> pd.DataFrame:
  """Generate (or reuse) the OsteoSim data set in out_dir; returns its manifest.

  workers: processes for rendering (0: all cores). labeled_scale, cohort_name ('paper' |
  'population'): see cohort.sample_cohort.
  """
  if is_current(out_dir, scale, seed, geometry, labeled_scale, cohort_name):
    return read_manifest(out_dir)
  t0 = time.time()
  df = cohort.sample_cohort(scale, seed, labeled_scale, cohort_name)
  df['path'] = [f'rois/{s}/{r}.nii.gz' for s, r in zip(df.site, df.roi_id)]
  df['mask_path'] = [f'rois/{s}/{r}_mask.nii.gz' for s, r in zip(df.site, df.roi_id)]
  for c in ('spacing_z', 'spacing_y', 'spacing_x'):
    df[c] = geometry.spacing_mm
  partial = out_dir.rstrip('/') + '.partial'
  os.makedirs(partial, exist_ok=True)
  jobs = [(i, row, geometry, seed, partial) for i, row in enumerate(df.to_dict('records'))]
  workers = workers or os.cpu_count() or 1
  voxels = int(np.prod(geometry.shape))
  bar = prog.bar(total=len(jobs), desc='osteosim', unit='roi', disable=not progress)
  if workers > 1:
    with mp.get_context('spawn').Pool(workers) as pool:
      for _ in pool.imap_unordered(_render_one, jobs, chunksize=8):
        bar.update()
  else:
    for job in jobs:
      _render_one(job)
      bar.update()
  bar.close()
  dt = time.time() - t0
  write_csv_atomic(df, os.path.join(partial, MANIFEST))
  info = _info(scale, seed, geometry, labeled_scale, cohort_name)
  info.update(n_rois=len(df), seconds=round(dt, 1),
              rois_per_s=round(len(df) / max(dt, 1e-9), 1),
              voxels_per_s=round(len(df) * voxels / max(dt, 1e-9)))
  with open(os.path.join(partial, INFO), 'w', encoding='utf-8') as f:
    json.dump(info, f, indent=1)
  if os.path.exists(out_dir):
    shutil.rmtree(out_dir)
  os.replace(partial, out_dir)
  return df


def read_manifest(out_dir: str) -> pd.DataFrame:
  """The manifest of a generated data set, with label columns as nullable integers."""
  df = pd.read_csv(os.path.join(out_dir, MANIFEST), keep_default_na=False,
                   na_values=[''], dtype={'device': str})
  df['device'] = df['device'].fillna('')
  for c in ['label'] + [f'label_{d}' for d in P.DEVICE_NAMES]:
    df[c] = df[c].astype('Int64')
  return df
