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

Around the model, for archives of real scans:
  - a DICOM folder may hold several series (in it or in subfolders): the axial ORIGINAL\\PRIMARY
    CT series with the most slices is read, and the choice is recorded (io.select_ct_series);
  - optional phantomless calibration of the HU scale from air and subcutaneous fat
    (calibration.py), its references and linear map recorded;
  - the contrast phase is recorded; the model was trained on native-phase data, and no HU
    correction is applied for a contrast phase (a warning says so: see PHASE_HU_SHIFT);
  - quality gates per vertebra (qc.py): a flagged vertebra is still predicted but marked
    (`qc_pass: false`, its `qc` list) and left out of the patient summary;
  - the patient summary per device: the lowest T-score over the QC-passing L1-L4 vertebrae
    (at least MIN_PATIENT_LEVELS of them) and the WHO class of it;
  - batch mode over a CSV of studies (run_batch): one folder per study, CSV tables of every
    vertebra and every patient, a run record; a failing study is recorded and the batch goes
    on, and a rerun skips the studies already finished.
"""
from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import json
import os
import re
import subprocess

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import SimpleITK as sitk  # noqa: E402

from osteojax.diagnosis import calibration, finetune, qc  # noqa: E402
from osteojax.data import cohort, extract, io, labels  # noqa: E402
from osteojax.data import params as P  # noqa: E402
from osteojax.texture import pool as pool_lib  # noqa: E402

SEXES = ('F', 'M')
PHASES = ('native', 'arterial', 'portal_venous')
# How far contrast raises soft-tissue HU: TotalSegmentator raises its HU thresholds by these for
# contrast-enhanced scans. Recorded in the warning of a contrast-phase study; NOT applied (a
# whole-image shift would undo the air/fat calibration, and bone enhances by its own amount).
PHASE_HU_SHIFT = {'native': 0.0, 'arterial': 20.0, 'portal_venous': 14.75}
MIN_PATIENT_LEVELS = 2      # ISCD: a spine diagnosis needs at least two evaluable vertebrae
REPORT, FIGURE = 'prediction.json', 'prediction.png'
RUN_RECORD, VERTEBRA_CSV, PATIENT_CSV = 'run.json', 'vertebrae.csv', 'patients.csv'
STUDY_COLUMNS = ('study', 'ct', 'mask', 'sex')     # the batch manifest; optional: labels, phase
_BATCH = 32                 # model batch: inputs padded to it, so one compiled function serves


def who_class(t: float) -> str:
  if t is None or not np.isfinite(t):
    return 'no DXA reference'
  return 'normal' if t >= -1.0 else ('osteoporosis' if t <= -2.5 else 'osteopenia')


def software() -> dict:
  """osteojax's version and the git revision of its source tree (None when not a checkout)."""
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  try:
    version = importlib.metadata.version('osteojax')
  except importlib.metadata.PackageNotFoundError:
    version = None
  try:
    rev = subprocess.run(['git', '-C', root, 'rev-parse', 'HEAD'], capture_output=True,
                         text=True, timeout=10).stdout.strip() or None
  except (OSError, subprocess.SubprocessError):
    rev = None
  return dict(osteojax_version=version, git_revision=rev)


class Model:
  """A fine-tuning workdir's model, loaded once, compiled once for every study."""

  def __init__(self, workdir: str):
    try:
      config, model, variables, stats = finetune.load(workdir)
    except (FileNotFoundError, ValueError) as e:
      raise io.OsteoDataError(workdir, str(e).replace(f'{workdir}: ', '')) from None
    self.workdir = os.path.abspath(workdir)
    self.config, self.stats, self.variables = config, stats, variables
    with open(os.path.join(workdir, 'config.json'), 'rb') as f:
      self.config_digest = hashlib.sha256(f.read()).hexdigest()
    self.geometry = P.RoiGeometry(shape=tuple(config.data.roi_shape),
                                  spacing_mm=float(config.data.spacing_mm))
    self.devices = [d for d in finetune.DEVICES if d in stats]
    self.model = model
    self._fn = finetune.make_predict_fn(model)

  def predict(self, images: np.ndarray, devices: np.ndarray) -> dict:
    """finetune.predict with this model's variables and its once-compiled function."""
    return finetune.predict(self.model, self.variables, images, devices, _BATCH, fn=self._fn)


# ---------------------------------------------------------------------------------- one study
def vertebra_inputs(ct: sitk.Image, mask: sitk.Image, convention: str,
                    geometry: P.RoiGeometry, mask_path: str):
  """(list of dict(level, label, center_mm, voxels, qc, ...), inputs [V, D, H, W]) of a CT + mask
  (already read, checked and, if asked, calibrated). The QC gates run here (qc.gates)."""
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
    maps = np.zeros((4,) + hu.shape, np.float32)     # only the original channel is used
    xs.append(np.asarray(pool_lib.normalize_pool(hu, maps, m))[0])   # all 0 for an empty ROI
    found.append(dict(level=level, label=int(value), center_mm=[round(float(c), 2) for c in center],
                      voxels=int(n), roi_voxels=int(m.sum()),
                      roi_mean_hu=round(float(hu[m > 0].mean()), 1) if m.any() else None))
  if not found:
    raise io.OsteoDataError(mask_path, f'no vertebra T1..L6 in the {convention} numbering')
  order = sorted(range(len(found)), key=lambda i: P.LEVEL_INDEX[found[i]['level']])
  found, xs = [found[i] for i in order], [xs[i] for i in order]
  qc.gates(ct, mask, found, geometry)
  return found, np.stack(xs)


def read_study(ct_path: str, mask_path: str, calibrate: bool = False):
  """(CT image (calibrated if asked), mask UInt32, series record or None, calibration record or
  None) of a study, every input checked (io.OsteoDataError on the first problem)."""
  ct, series = io.read_ct(ct_path)
  io.check_ct(ct, ct_path)
  mask = io.check_mask(io.read_image(mask_path), mask_path)
  io.check_geometry(ct, mask, ct_path, mask_path)
  cal = None
  if calibrate:
    ct, cal = calibration.calibrate(ct, mask, ct_path)
  return ct, mask, series, cal


def patient_summary(verts: list, devices) -> dict:
  """Per device: the lowest T-score over the QC-passing L1-L4 vertebrae, its level, the WHO class
  of it and the highest P(osteoporosis) among them; None / 'too few vertebrae' when fewer than
  MIN_PATIENT_LEVELS pass."""
  use = [v for v in verts if v['dxa_level'] and v['qc_pass']]
  out = dict(levels=[v['level'] for v in use], flagged=[v['level'] for v in verts
                                                        if not v['qc_pass']], devices={})
  for d in devices:
    if len(use) < MIN_PATIENT_LEVELS:
      out['devices'][d] = dict(t_score_min=None, level=None, who_class='too few vertebrae',
                               p_osteoporosis_max=None)
      continue
    low = min(use, key=lambda v: v['devices'][d]['t_score'])
    t = low['devices'][d]['t_score']
    out['devices'][d] = dict(t_score_min=t, level=low['level'], who_class=who_class(t),
                             p_osteoporosis_max=max(v['devices'][d]['p_osteoporosis']
                                                    for v in use))
  return out


def predict_study(model: Model, ct_path: str, mask_path: str, convention: str, sex: str,
                  calibrate: bool = False, phase: str = 'native'):
  """(report, inputs): the per-vertebra report (JSON-ready) and the ROIs [V, D, H, W]."""
  if sex not in SEXES:
    raise io.OsteoDataError(ct_path, f'sex {sex!r}: want F or M (the T-score reference '
                                     f'depends on it)')
  if phase not in PHASES:
    raise io.OsteoDataError(ct_path, f'phase {phase!r}: want one of {", ".join(PHASES)}')
  try:
    labels.label_map(convention)
  except labels.LabelError as e:
    raise io.OsteoDataError(mask_path, str(e)) from None
  ct, mask, series, cal = read_study(ct_path, mask_path, calibrate)
  verts, x = vertebra_inputs(ct, mask, convention, model.geometry, mask_path)
  devices = model.devices
  nd = len(devices)
  images = np.repeat(x, nd, axis=0)
  dev_names = [d for _ in verts for d in devices]
  out = model.predict(images, finetune.device_index(dev_names))
  bmd = finetune.unstandardise_bmd(out['bmd_z'], dev_names, model.stats)
  for i, vert in enumerate(verts):
    vert['dxa_level'] = vert['level'] in P.LABELED_LEVELS
    vert['level_pred'] = P.LEVELS[int(out['level'][i * nd])]
    vert['devices'] = {}
    for j, d in enumerate(devices):
      k = i * nd + j
      t = (float(cohort.t_score(d, bmd[k], sex, vert['level'])) if vert['dxa_level']
           else float('nan'))
      vert['devices'][d] = dict(bmd=round(float(bmd[k]), 4),
                                t_score=round(t, 2) if np.isfinite(t) else None,
                                who_class=who_class(t),
                                p_osteoporosis=round(float(out['prob'][k]), 4))
  warnings = []
  if phase != 'native':
    warnings.append(f'{phase} phase: the model was trained on native-phase CT and no HU '
                    f'correction is applied; contrast raises HU (TotalSegmentator shifts its '
                    f'thresholds by +{PHASE_HU_SHIFT[phase]:g} HU for this phase), so BMD may read '
                    f'high and T-scores optimistic')
  if not calibrate:
    calib = dict(applied=False)
  else:
    calib = dict(applied=True, **cal)
  report = dict(ct=ct_path, mask=mask_path, series=series, checkpoint=model.workdir,
                config_digest=model.config_digest, sex=sex, label_convention=convention,
                phase=phase, calibration=calib, roi_shape=list(model.geometry.shape),
                roi_spacing_mm=model.geometry.spacing_mm, devices=devices, vertebrae=verts,
                patient=patient_summary(verts, devices), warnings=warnings,
                note='Model output on CT; a research tool, not a diagnosis.')
  return report, x


def plot_report(report: dict, x: np.ndarray, path: str) -> str:
  """One page: each vertebra's mid-sagittal ROI slice, its QC flags and per-device T-scores."""
  verts = report['vertebrae']
  n = len(verts)
  fig = plt.figure(figsize=(11, 2.4 + 1.9 * n))
  gs = fig.add_gridspec(n + 1, 2, width_ratios=[1, 3], height_ratios=[0.8] + [1] * n)
  ax = fig.add_subplot(gs[0, :])
  ax.axis('off')
  cal = report['calibration']
  cal_text = (f'calibrated: air {cal["air_hu"]:.0f}, fat {cal["fat_hu"]:.0f} HU -> '
              f'HU\' = {cal["slope"]:.4f} HU {cal["intercept"]:+.1f}' if cal['applied']
              else 'not calibrated')
  series = report.get('series')
  src = os.path.basename(os.path.normpath(report['ct']))
  if series:
    p = series['picked']
    src += f' (series {p["series_number"] or p["series_uid"][-8:]}, {p["slices"]} slices)'
  summ = '; '.join(f'{d} min T {r["t_score_min"]:+.1f} {r["who_class"]}' if r['t_score_min']
                   is not None else f'{d}: {r["who_class"]}'
                   for d, r in report['patient']['devices'].items())
  ax.text(0, 0.5, f'{src}  |  sex {report["sex"]}  |  {report["phase"]} phase  |  {cal_text}\n'
          f'checkpoint {report["checkpoint"]}\npatient (L1-L4 passing QC: '
          f'{" ".join(report["patient"]["levels"]) or "none"}): {summ}\n'
          f'{report["note"]}', fontsize=8.5, va='center')
  colors = {'normal': '#4c9a2a', 'osteopenia': '#e0a800', 'osteoporosis': '#c0392b',
            'no DXA reference': '#888888'}
  for i, vert in enumerate(verts):
    a = fig.add_subplot(gs[i + 1, 0])
    a.imshow(x[i][:, :, x.shape[3] // 2], cmap='gray', origin='lower', vmin=0, vmax=1)
    flags = ', '.join(q['gate'] for q in vert['qc'])
    a.set_title(f'{vert["level"]} (model: {vert["level_pred"]})' + (f'\nQC: {flags}' if flags
                                                                    else ''),
                fontsize=9, color='#c0392b' if flags else 'k')
    a.axis('off')
    b = fig.add_subplot(gs[i + 1, 1])
    names = list(vert['devices'])
    ts = [vert['devices'][d]['t_score'] or 0.0 for d in names]
    b.barh(names, ts, color=[colors[vert['devices'][d]['who_class']] for d in names],
           alpha=1.0 if vert['qc_pass'] else 0.35)
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
  io.atomic_write(path, lambda f: fig.savefig(f, format='png', dpi=110))
  plt.close(fig)
  return path


def write_report(report: dict, x: np.ndarray, out_dir: str) -> tuple[str, str]:
  """<out_dir>/prediction.png, then prediction.json (atomic; the JSON marks a finished study)."""
  os.makedirs(out_dir, exist_ok=True)
  png = plot_report(report, x, os.path.join(out_dir, FIGURE))
  js = os.path.join(out_dir, REPORT)
  io.atomic_write_text(js, json.dumps(report, indent=1))
  return js, png


# -------------------------------------------------------------------------------- batch mode
def read_study_manifest(path: str, labels_default: str = '') -> list:
  """The studies of a batch manifest CSV: dicts of line, study, ct, mask (absolute; relative
  paths are taken from the manifest's folder), sex, labels (blank: labels_default; a row with
  neither is an error), phase ('' when blank).

  Columns: study, ct, mask, sex; optional labels (verse | totalseg), phase. A problem with the
  file as a whole (unreadable, a missing column, an empty, unsafe or repeated study name) is an
  OsteoDataError; a bad value in one row is left to that study (predict_study reports it).
  """
  path = str(path)
  df = io.read_csv_table(path, STUDY_COLUMNS, needs=f'needs {", ".join(STUDY_COLUMNS)}; '
                                                    f'optional labels, phase')
  root = os.path.dirname(os.path.abspath(path))
  rows, seen = [], {}
  for n, r in enumerate(df.to_dict('records')):
    line = n + 2
    r = {k: str(v).strip() for k, v in r.items()}
    study = r['study']
    if not re.fullmatch(r'[A-Za-z0-9][A-Za-z0-9._-]*', study):
      raise io.OsteoDataError(path, f'line {line}: study {study!r} is no folder name (letters, '
                                    f'digits, . _ -)')
    if study in seen:
      raise io.OsteoDataError(path, f'line {line}: study {study} already on line {seen[study]}')
    seen[study] = line
    sex = r['sex'].upper()[:1] if r['sex'].lower() in ('f', 'm', 'female', 'male') else r['sex']
    if not (r.get('labels') or labels_default):
      raise io.OsteoDataError(path, f'line {line}: no labels value (verse or totalseg) and no '
                                    f'--labels for rows without one')
    rows.append(dict(line=line, study=study, sex=sex, labels=r.get('labels') or labels_default,
                     phase=r.get('phase', ''),
                     **{c: os.path.normpath(os.path.join(root, r[c])) if r[c] else ''
                        for c in ('ct', 'mask')}))
  return rows


def _now():
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')


def vertebra_table(reports: dict) -> pd.DataFrame:
  """One row per vertebra of {study: report}; per-device columns bmd_/t_/who_/p_<device>."""
  rows = []
  for study, rep in reports.items():
    for v in rep['vertebrae']:
      r = dict(study=study, level=v['level'], label=v['label'], dxa_level=v['dxa_level'],
               qc_pass=v['qc_pass'], qc=';'.join(q['gate'] for q in v['qc']),
               volume_ml=v['volume_ml'], level_pred=v['level_pred'])
      for d, p in v['devices'].items():
        r.update({f'bmd_{d}': p['bmd'], f't_{d}': p['t_score'], f'who_{d}': p['who_class'],
                  f'p_{d}': p['p_osteoporosis']})
      rows.append(r)
  return pd.DataFrame(rows)


def patient_table(reports: dict) -> pd.DataFrame:
  """One row per study: calibration, series, the patient summary per device."""
  rows = []
  for study, rep in reports.items():
    cal, pat = rep['calibration'], rep['patient']
    r = dict(study=study, sex=rep['sex'], phase=rep['phase'], calibrated=cal['applied'],
             air_hu=cal.get('air_hu'), fat_hu=cal.get('fat_hu'), slope=cal.get('slope'),
             intercept=cal.get('intercept'),
             series=(os.path.normpath(os.path.join(rep['ct'], rep['series']['picked']['folder']))
                     if rep.get('series') else ''),
             vertebrae=len(rep['vertebrae']), flagged=' '.join(pat['flagged']),
             dxa_levels=' '.join(pat['levels']))
    for d, p in pat['devices'].items():
      r.update({f't_min_{d}': p['t_score_min'], f'level_{d}': p['level'],
                f'who_{d}': p['who_class'], f'p_max_{d}': p['p_osteoporosis_max']})
    rows.append(r)
  return pd.DataFrame(rows)


def _read_report(path):
  try:
    with open(path, encoding='utf-8') as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise io.OsteoDataError(path, f'cannot read a finished study\'s report: {e}') from None


def run_batch(manifest: str, model: Model, out_dir: str, calibrate: bool = False,
              labels_default: str = '', phase_default: str = 'native', log=print) -> dict:
  """Predict every study of a manifest into out_dir; returns the run record (also <out>/run.json).

  out_dir/<study>/prediction.json + prediction.png per study; a study whose JSON exists is
  finished and skipped (the JSON is written last and atomically). A study that fails is
  recorded (status 'failed', its one-line error) and the batch goes on. At the end
  vertebrae.csv and patients.csv are rebuilt from every finished study of the manifest.
  Results of another checkpoint in out_dir are an OsteoDataError, before anything runs.
  """
  rows = read_study_manifest(manifest, labels_default)
  out_dir = os.path.abspath(out_dir)
  for r in rows:
    js = os.path.join(out_dir, r['study'], REPORT)
    if os.path.exists(js):
      digest = _read_report(js).get('config_digest')
      if digest != model.config_digest:
        raise io.OsteoDataError(out_dir, f'study {r["study"]} was predicted by another model '
                                         f'(config digest {str(digest)[:12]}, this one '
                                         f'{model.config_digest[:12]}); use a new --out')
  run = dict(tool='tools/predict.py', **software(), checkpoint=model.workdir,
             config_digest=model.config_digest, manifest=os.path.abspath(manifest),
             out=out_dir, calibrate=calibrate, started=_now(), finished=None, studies=[])
  record = os.path.join(out_dir, RUN_RECORD)
  for i, r in enumerate(rows):
    d = os.path.join(out_dir, r['study'])
    entry = dict(study=r['study'], line=r['line'], ct=r['ct'], mask=r['mask'], error=None)
    if os.path.exists(os.path.join(d, REPORT)):
      entry['status'] = 'skipped'               # finished in an earlier run
    else:
      try:
        for c in ('ct', 'mask'):
          if not r[c]:
            raise io.OsteoDataError(manifest, f'line {r["line"]}: empty {c}')
        report, x = predict_study(model, r['ct'], r['mask'], r['labels'],
                                  r['sex'], calibrate, r['phase'] or phase_default)
        report['study'] = r['study']
        write_report(report, x, d)
        entry['status'] = 'ok'
        entry['flagged'] = report['patient']['flagged']
        if report['series']:
          p = report['series']['picked']
          entry['series'] = dict(p, folder=os.path.normpath(os.path.join(r['ct'], p['folder'])))
      except Exception as e:       # noqa: BLE001  a bad study is recorded, the batch goes on
        entry['status'] = 'failed'
        entry['error'] = (f'error: {e}' if isinstance(e, io.OsteoDataError)
                          else f'error: {r["ct"]}: {type(e).__name__}: {" ".join(str(e).split())}')
    run['studies'].append(entry)
    io.atomic_write_text(record, json.dumps(run, indent=1))
    if log:
      extra = [entry['error']] if entry['status'] == 'failed' else []
      if entry.get('series'):
        p = entry['series']
        extra.append(f'series {os.path.relpath(p["folder"])} ({p["slices"]} slices)')
      if entry.get('flagged'):
        extra.append(f'QC flags: {" ".join(entry["flagged"])}')
      log(f'[predict] {i + 1}/{len(rows)} {r["study"]}: {"; ".join([entry["status"]] + extra)}')
  reports = {r['study']: _read_report(os.path.join(out_dir, r['study'], REPORT)) for r in rows
             if os.path.exists(os.path.join(out_dir, r['study'], REPORT))}
  if reports:
    io.atomic_write_text(os.path.join(out_dir, VERTEBRA_CSV),
                         vertebra_table(reports).to_csv(index=False))
    io.atomic_write_text(os.path.join(out_dir, PATIENT_CSV),
                         patient_table(reports).to_csv(index=False))
  run['finished'] = _now()
  io.atomic_write_text(record, json.dumps(run, indent=1))
  return run
