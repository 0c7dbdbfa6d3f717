"""What a clinician would use instead of a deep model, and the ceiling: three baseline rows.

Each function returns a predictions table (see `osteojax.evaluate.diagnosis`) over the labeled
validation and test ROIs of a data set (a manifest with `path` / `mask_path` columns relative
to the data folder, as OsteoSim writes it).

1. Trabecular HU thresholds (Pickhardt et al. 2013, AJR 200: 1,867 patients; L1 trabecular
   attenuation <= 160 HU about 90 % sensitive, <= 110 HU about 90 % specific for DXA
   osteoporosis). The trabecular region of an ROI is its vertebral-body mask eroded by
   ceil(3.5 mm / spacing) voxels along each axis (2 voxels on the 1.8 mm OsteoSim grid;
   separable per-axis erosion, i.e. a box structuring element): that drops the cortical shell
   (<= 0.5 mm), the partial-volume edge and most of the scanner's blur of it, as a clinician's
   ROI keeps clear of the cortex. Where that leaves fewer than 20 voxels the erosion steps down
   one voxel at a time. score = -mean HU; the cut-offs are fixed (-160, -110 on the score), not
   tuned. The same cut-off is applied to every vertebra (vertebra rows); at patient level the
   reading of the patient's L1 decides, as in the paper by Pickhardt et al.; a patient whose
   evaluated ROIs have no L1 is read at the level closest to L1 (ties: the lower one; in
   OsteoSim's labeled L1-L4 that is L2, then L3). The cut-offs were set on 120 kV scans; they
   are applied to every scanner as they would be in practice.
2. Radiomics features + logistic regression: pyradiomics 3.0.1 (non-voxel-based) first-order,
   GLCM and GLRLM features on the image and body mask with pyradiomics' defaults (bin width
   25 HU, no resampling, no normalisation), cached per ROI. Features are standardised on the
   train split; an L2 logistic regression is fit on train with its penalty chosen by 5-fold
   cross-validated AUC on train, folds grouped by patient; the same features give a ridge
   regression of the site device's BMD (penalty by leave-one-out on train) as bmd_pred.
   Thresholds come from validation, like every model (diagnosis.THRESHOLD_RULE). A second row,
   `radiomics_ridge`, reads the diagnosis from that ridge BMD the way the deep model reads its
   BMD head (config.score; RIDGE_READOUTS, the fine-tuning default 't': the negated T-score of
   the reading against its device's reference at its level; 'bmd': the negated reading): the
   same readout for both, so they compare like with like.
3. The oracle (`osteojax.data.oracle`): the exact Bayes posterior from the generator's truth
   given the anatomy, age, sex, level and device; its patient score is P(any vertebra
   positive). Beside it the CT-only oracle (`oracle_ct_only`): the posterior given what a model
   sees (the rendered CT and the device, no age or sex), estimated by regression over
   generator draws (`oracle.ct_only_scores`): the ceiling for a CT model; and the density-reader
   oracle (`oracle_hu`): the same given only the exact mean trabecular HU, size and level
   (`oracle.hu_reader_scores`), the ceiling for a model that reads density but not texture.
"""
from __future__ import annotations

import hashlib
import json
import math
import multiprocessing as mp
import os
import time
from typing import Sequence

import numpy as np
import pandas as pd
import SimpleITK as sitk
from scipy import ndimage

from osteojax import progress as prog
from osteojax.data import cohort
from osteojax.data import io as dio
from osteojax.data import oracle
from osteojax.data import params as P
from osteojax.evaluate import diagnosis
from osteojax.texture import reference

HU_CUTOFFS = {'hu160': 160.0, 'hu110': 110.0}     # Pickhardt 2013: sensitive, specific
TRABECULAR_MARGIN_MM = 3.5
MIN_TRABECULAR_VOXELS = 20
RADIOMICS_CLASSES = ('firstorder', 'glcm', 'glrlm')
RADIOMICS_SETTINGS = dict(binWidth=25, label=1, additionalInfo=False)
EVAL_SPLITS = ('valid', 'test')
BASELINES = ('hu160', 'hu110', 'radiomics_lr', 'radiomics_ridge', 'oracle', 'oracle_ct_only',
             'oracle_hu')
RIDGE_READOUTS = ('t', 'bmd')   # how radiomics_ridge reads its BMD (finetune's config.score)


def ridge_score_for(model_score: str) -> str:
  """The ridge readout that matches a model's config.score: its own BMD readout, or 't' (the
  fine-tuning default) for a model ranked by its class head."""
  return model_score if model_score in RIDGE_READOUTS else 't'


def _check_ridge_readout(readout: str) -> None:
  if readout not in RIDGE_READOUTS:
    raise ValueError(f'unknown ridge readout {readout!r}; known: {", ".join(RIDGE_READOUTS)}')


# ----------------------------------------------------------------------------------------------
# Tables.

def labeled_rows(manifest: pd.DataFrame, splits: Sequence[str] = EVAL_SPLITS) -> pd.DataFrame:
  """The manifest rows of `splits` that carry a label."""
  d = manifest[manifest.split.isin(splits)]
  return d[d.label.notna()].reset_index(drop=True)


def _base_table(rows: pd.DataFrame) -> pd.DataFrame:
  """Identity, label and DXA columns of a predictions table for manifest rows."""
  out = rows[['roi_id', 'patient_id', 'site', 'split', 'device', 'level']].copy()
  out['label'] = rows.label.astype(int).to_numpy()
  out['bmd'] = pd.to_numeric(rows.bmd, errors='coerce').astype(float).to_numpy()
  return out


def _paths(data_dir, row):
  return os.path.join(data_dir, row['path']), os.path.join(data_dir, row['mask_path'])


def _read_pair(data_dir, row):
  """(CT image, label-1 mask image) of a manifest row, checked through osteojax.data.io."""
  img_path, mask_path = _paths(data_dir, row)
  img = dio.read_image(img_path)
  mask = dio.read_image(mask_path)
  dio.check_ct(img, img_path)
  mask = dio.check_mask(mask, mask_path)
  dio.check_geometry(img, mask, img_path, mask_path)
  return img, sitk.Cast(mask > 0, sitk.sitkUInt8)


# ----------------------------------------------------------------------------------------------
# 1. Trabecular HU.

def trabecular_region(mask: np.ndarray, spacing_mm: Sequence[float],
                      margin_mm: float = TRABECULAR_MARGIN_MM,
                      min_voxels: int = MIN_TRABECULAR_VOXELS) -> tuple[np.ndarray, int]:
  """The mask eroded by ceil(margin / spacing) voxels per axis (see the module doc).

  mask: [z, y, x] bool; spacing_mm: (z, y, x). Returns (region, voxels eroded on the finest
  axis). Steps the erosion down while fewer than min_voxels remain; raises ValueError for an
  empty mask.
  """
  mask = np.asarray(mask, bool)
  if not mask.any():
    raise ValueError('empty mask')
  steps = [int(math.ceil(margin_mm / s - 1e-9)) for s in spacing_mm]
  while True:
    region = mask
    for axis, k in enumerate(steps):
      if k > 0:
        size = [1, 1, 1]
        size[axis] = 2 * k + 1
        region = ndimage.binary_erosion(region, np.ones(size, bool), border_value=0)
    if region.sum() >= min_voxels or max(steps) == 0:
      return region, max(steps)
    steps = [max(k - 1, 0) for k in steps]


def trabecular_hu(image: np.ndarray, mask: np.ndarray, spacing_mm: Sequence[float],
                  margin_mm: float = TRABECULAR_MARGIN_MM) -> tuple[float, int, int]:
  """(mean HU, voxels, erosion steps) of the trabecular region of one ROI."""
  region, k = trabecular_region(mask, spacing_mm, margin_mm)
  return float(np.asarray(image, np.float64)[region].mean()), int(region.sum()), k


def measure_hu(data_dir: str, rows: pd.DataFrame, progress: bool = True) -> pd.DataFrame:
  """Trabecular mean HU of each manifest row: roi_id, hu, trab_voxels, erosion_vox."""
  out = []
  for _, row in prog.bar(rows.iterrows(), total=len(rows), desc='trabecular HU', unit='roi',
                         disable=not progress):
    img, mask = _read_pair(data_dir, row)
    spacing = img.GetSpacing()[::-1]
    try:
      hu, n, k = trabecular_hu(sitk.GetArrayViewFromImage(img),
                               sitk.GetArrayViewFromImage(mask) > 0, spacing)
    except ValueError as e:
      raise dio.OsteoDataError(_paths(data_dir, row)[1], str(e)) from None
    out.append(dict(roi_id=row['roi_id'], hu=hu, trab_voxels=n, erosion_vox=k))
  return pd.DataFrame(out, columns=['roi_id', 'hu', 'trab_voxels', 'erosion_vox'])


def patient_reading_level(levels: Sequence[str]) -> str:
  """The level a patient's HU is read at: L1 if present, else the closest (ties: lower)."""
  target = P.LEVEL_INDEX['L1']
  return min(levels, key=lambda l: (abs(P.LEVEL_INDEX[l] - target), -P.LEVEL_INDEX[l]))


def hu_predictions(rows: pd.DataFrame, hu: pd.DataFrame, cutoff_hu: float) -> pd.DataFrame:
  """Predictions table of the rule 'osteoporosis if trabecular HU <= cutoff_hu'.

  rows: manifest rows; hu: `measure_hu` output for them. score = -HU, threshold = -cutoff,
  patient_score = -HU at `patient_reading_level`; prob and bmd_pred are NaN (the rule gives
  neither a probability nor a BMD).
  """
  d = rows.merge(hu, on='roi_id', how='left', validate='one_to_one')
  if d.hu.isna().any():
    raise ValueError(f'no HU for ROI {d.roi_id[d.hu.isna()].iloc[0]}')
  out = _base_table(d)
  out['hu'] = d.hu.to_numpy()
  out['score'] = -out.hu
  out['prob'] = np.nan
  out['bmd_pred'] = np.nan
  out['threshold'] = -float(cutoff_hu)
  read = {}
  for pid, g in out.groupby('patient_id'):
    lev = patient_reading_level(list(g.level))
    read[pid] = float(g.score[g.level == lev].max())
  out['patient_score'] = out.patient_id.map(read)
  out['patient_level'] = out.patient_id.map(
      {pid: patient_reading_level(list(g.level)) for pid, g in out.groupby('patient_id')})
  return out


# ----------------------------------------------------------------------------------------------
# 2. Radiomics features + logistic regression.

def _settings_digest() -> str:
  import radiomics
  blob = json.dumps(dict(settings=RADIOMICS_SETTINGS, classes=RADIOMICS_CLASSES,
                         version=radiomics.__version__), sort_keys=True)
  return hashlib.sha1(blob.encode()).hexdigest()[:12]


def _fingerprint(data_dir, row) -> str:
  parts = []
  for p in _paths(data_dir, row):
    st = os.stat(p)
    parts.append(f'{os.path.relpath(p, data_dir)}:{st.st_size}:{st.st_mtime_ns}')
  return '|'.join(parts)


def _extractor():
  from radiomics import featureextractor
  reference.quiet_pyradiomics()
  ex = featureextractor.RadiomicsFeatureExtractor(**RADIOMICS_SETTINGS)
  ex.disableAllFeatures()
  for c in RADIOMICS_CLASSES:
    ex.enableFeatureClassByName(c)
  return ex


PARALLEL_MIN_ROIS = 256


def _radiomics_chunk(job) -> list[dict]:
  """Features of a chunk of manifest rows (data_dir, rows); a worker process's unit."""
  data_dir, rows = job
  ex = _extractor()
  out = []
  for row in rows:
    img, mask = _read_pair(data_dir, row)
    res = ex.execute(img, mask)
    out.append({k[len('original_'):]: float(v) for k, v in res.items()
                if k.startswith('original_')})
  return out


def radiomics_features(data_dir: str, rows: pd.DataFrame, cache_dir: str | None = None,
                       progress: bool = True, workers: int = 0) -> pd.DataFrame:
  """pyradiomics features of each manifest row: roi_id + one column per feature.

  With cache_dir, features are kept in cache_dir/radiomics_<settings digest>.csv, keyed by
  roi_id and the image and mask files' (path, size, mtime): only new or changed ROIs are
  computed, and the cache is rewritten atomically after them. workers: processes
  (pyradiomics runs on one core); 0: every core once there are PARALLEL_MIN_ROIS ROIs to
  compute (a worker takes seconds to start), else this process.
  """
  cache, path = None, None
  if cache_dir:
    os.makedirs(cache_dir, exist_ok=True)
    path = os.path.join(cache_dir, f'radiomics_{_settings_digest()}.csv')
    if os.path.exists(path):
      cache = pd.read_csv(path).set_index('roi_id')
  prints = {r['roi_id']: _fingerprint(data_dir, r) for _, r in rows.iterrows()}
  todo = [r for _, r in rows.iterrows()
          if cache is None or r['roi_id'] not in cache.index
          or cache.at[r['roi_id'], 'fingerprint'] != prints[r['roi_id']]]
  new = []
  if todo:
    chunk = 16
    jobs = [(data_dir, [dict(r) for r in todo[i:i + chunk]]) for i in range(0, len(todo), chunk)]
    if not workers:
      workers = (os.cpu_count() or 1) if len(todo) >= PARALLEL_MIN_ROIS else 1
    workers = min(workers, len(jobs))
    bar = prog.bar(total=len(todo), desc='radiomics', unit='roi', disable=not progress)
    pool = mp.get_context('spawn').Pool(workers) if workers > 1 else None
    try:
      results = pool.imap(_radiomics_chunk, jobs) if pool else map(_radiomics_chunk, jobs)
      for (_, part), feats in zip(jobs, results):
        new += [dict(roi_id=r['roi_id'], fingerprint=prints[r['roi_id']], **f)
                for r, f in zip(part, feats)]
        bar.update(len(part))
    finally:
      if pool:
        pool.terminate()
      bar.close()
  table = pd.DataFrame(new).set_index('roi_id') if new else None
  if cache is not None:
    table = cache if table is None else pd.concat([cache.drop(table.index, errors='ignore'),
                                                   table])
  if path and new:
    with dio.atomic_path(path) as tmp:
      table.reset_index().to_csv(tmp, index=False)
  out = table.loc[rows.roi_id.to_numpy()].reset_index()
  return out.drop(columns='fingerprint')


def radiomics_predictions(train_rows: pd.DataFrame, eval_rows: pd.DataFrame,
                          features: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
  """Fit on train_rows (logistic regression for the label, ridge for BMD) and predict eval_rows.

  features: roi_id + feature columns covering both sets of rows.
  """
  from sklearn.linear_model import LogisticRegressionCV, RidgeCV
  from sklearn.model_selection import StratifiedGroupKFold
  from sklearn.preprocessing import StandardScaler

  f = features.set_index('roi_id')
  xtr = f.loc[train_rows.roi_id.to_numpy()].to_numpy(np.float64)
  xev = f.loc[eval_rows.roi_id.to_numpy()].to_numpy(np.float64)
  keep = np.isfinite(xtr).all(0) & np.isfinite(xev).all(0) & (np.ptp(xtr, 0) > 0)
  scaler = StandardScaler().fit(xtr[:, keep])
  xtr, xev = scaler.transform(xtr[:, keep]), scaler.transform(xev[:, keep])
  y = train_rows.label.astype(int).to_numpy()
  groups = train_rows.patient_id.to_numpy()
  pos_patients = pd.Series(y).groupby(groups).max()
  # Folds are grouped by patient, so each class needs a patient per fold.
  n_splits = int(min(5, pos_patients.sum(), (1 - pos_patients).sum()))
  if n_splits < 2:
    raise ValueError(f'train split has {int(pos_patients.sum())} patients with and '
                     f'{int((1 - pos_patients).sum())} without osteoporosis: too few to fit '
                     'the radiomics model')
  folds = list(StratifiedGroupKFold(n_splits, shuffle=True, random_state=seed)
               .split(xtr, y, groups))
  clf = LogisticRegressionCV(Cs=np.logspace(-3, 2, 11), l1_ratios=(0.0,), cv=folds,
                             scoring='roc_auc', max_iter=5000,
                             use_legacy_attributes=False).fit(xtr, y)
  out = _base_table(eval_rows)
  out['prob'] = clf.predict_proba(xev)[:, 1]
  bmd = pd.to_numeric(train_rows.bmd, errors='coerce').to_numpy(float)
  ok = np.isfinite(bmd)
  if ok.sum() >= 3:
    reg = RidgeCV(alphas=np.logspace(-2, 3, 11)).fit(xtr[ok], bmd[ok])
    out['bmd_pred'] = reg.predict(xev)
  else:
    out['bmd_pred'] = np.nan
  out.attrs['n_features'] = int(keep.sum())
  return out


def ridge_readout(pred: pd.DataFrame, readout: str = 't') -> pd.DataFrame:
  """The same predictions with the diagnosis read from the predicted BMD (a lower reading ranks
  as more likely osteoporotic): readout 'bmd', score = -bmd_pred (g/cm2 of the site's device);
  't', score = -T of bmd_pred against the device's reference at the row's level
  (cohort.reading_t_score, as finetune.diagnosis_score reads the deep model)."""
  _check_ridge_readout(readout)
  bmd = pd.to_numeric(pred.bmd_pred, errors='coerce').to_numpy(float)
  if not np.isfinite(bmd).all():
    raise ValueError('the ridge BMD regression has no prediction for some rows (too few '
                     'training BMD readings)')
  if readout == 'bmd':
    return pred.assign(score=-bmd)
  return pred.assign(score=-cohort.reading_t_score(bmd, pred.device.to_numpy(),
                                                   pred.level.to_numpy()))


# ----------------------------------------------------------------------------------------------
# 3. The oracle.

def oracle_predictions(rows: pd.DataFrame) -> pd.DataFrame:
  """Predictions table of the oracle posterior (needs the generator's truth columns)."""
  missing = [c for c in ('abmd_true', 'age', 'sex') if c not in rows.columns
             or rows[c].isna().any()]
  if missing:
    raise ValueError(f'the oracle needs generated data: columns {missing} missing or empty')
  out = _base_table(rows)
  vert, patient = oracle.oracle_scores(rows.reset_index(drop=True))
  out['prob'] = vert
  out['patient_score'] = out.patient_id.map(patient).to_numpy(float)
  out['bmd_pred'] = np.nan
  return out


def ct_only_oracle_predictions(rows: pd.DataFrame, cohort_name: str,
                               patients: int = oracle.CT_ONLY_REFERENCE_PATIENTS,
                               visible: tuple = oracle.CT_VISIBLE) -> pd.DataFrame:
  """Predictions table of the CT-only oracle (oracle.ct_only_scores; visible=HU_VISIBLE: the
  density-reader oracle); the patient score is the maximum over the patient's vertebrae, as
  for every model."""
  missing = [c for c in visible if c not in rows.columns or rows[c].isna().any()]
  if missing:
    raise ValueError(f'the CT-only oracle needs generated data: columns {missing} missing')
  out = _base_table(rows)
  out['prob'] = oracle.ct_only_scores(rows.reset_index(drop=True), cohort_name, patients,
                                      visible=visible)
  out['bmd_pred'] = np.nan
  return out


def data_cohort(data_dir: str) -> str | None:
  """The cohort a generated data folder was drawn from (osteosim.json; written before cohorts
  existed: population); None for a folder without osteosim.json (not generated by OsteoSim)."""
  from osteojax.data import osteosim
  path = os.path.join(data_dir, osteosim.INFO)
  if not os.path.exists(path):
    return None
  with open(path, encoding='utf-8') as f:
    return json.load(f).get('cohort', 'population')


# ----------------------------------------------------------------------------------------------
# All of them.

def run_baselines(data_dir: str, out_dir: str, cache_dir: str | None = None,
                  progress: bool = True, report: bool = True, base: str | None = None,
                  ct_only_patients: int = oracle.CT_ONLY_REFERENCE_PATIENTS,
                  ridge_score: str = 't') -> dict:
  """Run every baseline on a data folder; write out_dir/<name>.csv for each of BASELINES.
  radiomics_ridge reads its BMD as `ridge_score` (ridge_readout: the deep model's config.score).

  The oracle needs the generator's truth columns and is skipped on real data; the CT-only
  oracle also needs the cohort the data was drawn from (osteosim.json).

  Reads data_dir/manifest.csv (OsteoSim layout). cache_dir (default out_dir/cache) keeps the
  radiomics features. With report, also writes the evaluation (diagnosis.write_report) of the
  four tables to out_dir, with paired tests against `base` (one of BASELINES) if given.
  Returns {name: predictions table}.
  """
  from osteojax.data import osteosim
  _check_ridge_readout(ridge_score)     # before any work
  manifest_path = os.path.join(data_dir, osteosim.MANIFEST)
  if not os.path.exists(manifest_path):
    raise dio.OsteoDataError(manifest_path, 'no such file (not a data folder?)')
  manifest = osteosim.read_manifest(data_dir)
  rows = labeled_rows(manifest)
  if len(rows) == 0:
    raise dio.OsteoDataError(manifest_path, 'no labeled validation or test rows')
  train = labeled_rows(manifest, ('train',))
  cache_dir = cache_dir or os.path.join(out_dir, 'cache')
  os.makedirs(out_dir, exist_ok=True)
  hu = measure_hu(data_dir, rows, progress)
  preds = {name: hu_predictions(rows, hu, cut) for name, cut in HU_CUTOFFS.items()}
  feats = radiomics_features(data_dir, pd.concat([train, rows], ignore_index=True), cache_dir,
                             progress)
  try:
    preds['radiomics_lr'] = radiomics_predictions(train, rows, feats)
    preds['radiomics_ridge'] = ridge_readout(preds['radiomics_lr'], ridge_score)
  except ValueError as e:
    raise dio.OsteoDataError(manifest_path, f'radiomics baseline: {e}') from None
  if 'abmd_true' in rows.columns and rows.abmd_true.notna().all():
    preds['oracle'] = oracle_predictions(rows)
    cohort_name = data_cohort(data_dir)
    if cohort_name is not None:
      t0 = time.time()
      if progress:
        print(f'[oracle] CT-only and density-reader oracles: {ct_only_patients} reference '
              f'patients per site drawn and scored, one regressor each per site', flush=True)
      preds['oracle_ct_only'] = ct_only_oracle_predictions(rows, cohort_name, ct_only_patients)
      preds['oracle_hu'] = ct_only_oracle_predictions(rows, cohort_name, ct_only_patients,
                                                      oracle.HU_VISIBLE)
      if progress:
        print(f'[oracle] done in {(time.time() - t0) / 60:.1f} min', flush=True)
  for name, p in preds.items():
    diagnosis.write_predictions(p, os.path.join(out_dir, f'{name}.csv'))
  if report:
    diagnosis.write_report(preds, out_dir, base=base, deterministic=tuple(preds))
  return preds
