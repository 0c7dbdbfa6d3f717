"""The paper's diagnosis evaluation: per-site tables from a predictions table, ROC figures.

Every model, baseline and the oracle meets the evaluation as a *predictions table*: one row per
vertebra ROI with the columns

  roi_id, patient_id, site (A|B|C|D), split (valid|test), device, level,
  label     osteoporosis (0/1) on the site's own DXA device (WHO: T <= -2.5),
  prob      predicted P(osteoporosis),
  bmd       the site device's DXA reading (g/cm^2; NaN if unknown),
  bmd_pred  predicted BMD (g/cm^2; NaN when the model predicts none).

Optional columns:
  score          a ranking score used instead of prob (higher = more likely osteoporosis), for
                 rules that give no probability (the HU baseline's -HU);
  threshold      a fixed decision threshold on the score (a published cut-off), used instead
                 of the validation rule below; one value for the whole table;
  patient_score  a patient-level score, the same on each of a patient's rows (the oracle's
                 P(any vertebra), the HU baseline's L1 reading), used instead of the
                 per-patient maximum.

Threshold rule (never touches the test split): the vertebra threshold maximises Youden's J
(SEN + SPE - 1) over all validation vertebrae of the table, every site pooled
(`metrics.youden_threshold`; a vertebra is positive when its score >= threshold). Patient level
follows the paper's "a patient is positive if any vertebra is": the patient score is the
maximum of its vertebra scores and the *same* vertebra threshold decides it, which is exactly
"positive if any vertebra is positive". With a `patient_score` column, patient calls use that
score and its own Youden threshold over the validation patients. With a `threshold` column the
fixed cut-off decides both levels and validation is not used. Where the validation split holds
one class only (tiny data sets), a probability is cut at 0.5 and the rule says so; a score that
is not a probability then has no threshold (an error).
A second threshold, the cut that maximises F1 on the same validation cases
(`metrics.f1_threshold`, same conventions), gives the column `f1_f1thr` beside the Youden F1:
at low prevalence Youden's J favours sensitivity and its F1 is low for every model.

Sites: A, B, C (internal, one DXA device each), D (external), `internal` = A + B + C pooled, and
`all`. Metrics: ACC, SEN, SPE, F1 (fractions), AUC, and, where bmd_pred is given, MAE, Pearson
r and R^2 of the BMD prediction (vertebra level). Seeds of a model are aggregated as mean and
sample SD (ddof = 1) of each metric.
"""
from __future__ import annotations

import json
import math
import os
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from osteojax.data import io
from osteojax.data.io import OsteoDataError
from osteojax.evaluate import metrics

REQUIRED_COLUMNS = ['roi_id', 'patient_id', 'site', 'split', 'device', 'level', 'label',
                    'prob', 'bmd', 'bmd_pred']
SPLITS = ('valid', 'test')
SITES = ('A', 'B', 'C', 'D')
SITE_GROUPS = {'A': ('A',), 'B': ('B',), 'C': ('C',), 'D': ('D',),
               'internal': ('A', 'B', 'C'), 'all': ('A', 'B', 'C', 'D')}
LEVELS = ('vertebra', 'patient')
METRICS = ('acc', 'sen', 'spe', 'f1', 'f1_f1thr', 'auc')
BMD_METRICS = ('bmd_mae', 'bmd_r', 'bmd_r2')
COUNTS = ('n', 'positives')
PERCENT = ('acc', 'sen', 'spe', 'f1', 'f1_f1thr')
HEADERS = {'f1': 'F1', 'f1_f1thr': 'F1 (F1-opt. thr.)'}
FALLBACK_RULE = 'validation holds one class only: P(osteoporosis) >= 0.5'
THRESHOLD_RULE = ("Youden's J on the validation vertebrae (all sites pooled); patient = max "
                  "over its vertebrae, same threshold")


# ----------------------------------------------------------------------------------------------
# Reading and checking.

def check_predictions(pred: pd.DataFrame, name: str = 'predictions') -> pd.DataFrame:
  """A checked copy of a predictions table; OsteoDataError(name, problem) when it is not one."""
  missing = [c for c in REQUIRED_COLUMNS if c not in pred.columns]
  if missing:
    raise OsteoDataError(name, f'missing columns {missing}')
  if len(pred) == 0:
    raise OsteoDataError(name, 'no rows')
  df = pred.copy()
  dup = df.roi_id[df.roi_id.duplicated()]
  if len(dup):
    raise OsteoDataError(name, f'{len(dup)} duplicated roi_id (first: {dup.iloc[0]})')
  df['site'] = df.site.astype(str)
  df['split'] = df.split.astype(str)
  df['patient_id'] = df.patient_id.astype(str)
  bad = sorted(set(df.split) - set(SPLITS))
  if bad:
    raise OsteoDataError(name, f'split must be one of {list(SPLITS)}, got {bad}')
  bad = sorted(set(df.site) - set(SITES))
  if bad:
    raise OsteoDataError(name, f'site must be one of {list(SITES)}, got {bad}')
  label = pd.to_numeric(df.label, errors='coerce')
  if label.isna().any() or not label.isin([0, 1]).all():
    raise OsteoDataError(name, 'label must be 0 or 1 on every row')
  df['label'] = label.astype(int)
  col = score_column(df)
  s = pd.to_numeric(df[col], errors='coerce').astype(float)
  if not np.isfinite(s.to_numpy()).all():
    raise OsteoDataError(name, f'{col} must be a finite number on every row')
  df[col] = s
  for c in ('bmd', 'bmd_pred'):
    df[c] = pd.to_numeric(df[c], errors='coerce').astype(float)
  if 'threshold' in df.columns:
    t = pd.to_numeric(df.threshold, errors='coerce')
    if t.isna().any() or t.nunique() != 1:
      raise OsteoDataError(name, 'threshold must be one finite value for the whole table')
    df['threshold'] = t.astype(float)
  if 'patient_score' in df.columns:
    ps = pd.to_numeric(df.patient_score, errors='coerce').astype(float)
    if not np.isfinite(ps.to_numpy()).all():
      raise OsteoDataError(name, 'patient_score must be a finite number on every row')
    if (ps.groupby(df.patient_id).nunique() > 1).any():
      raise OsteoDataError(name, 'patient_score differs between rows of one patient')
    df['patient_score'] = ps
  if (df.groupby('patient_id').site.nunique() > 1).any():
    raise OsteoDataError(name, 'a patient_id appears at more than one site')
  return df


def read_predictions(path: str) -> pd.DataFrame:
  """A checked predictions table from CSV; OsteoDataError(path, problem) for bad input."""
  if not os.path.exists(path):
    raise OsteoDataError(path, 'no such file')
  try:
    df = pd.read_csv(path, dtype={'roi_id': str, 'patient_id': str, 'site': str, 'split': str,
                                  'device': str, 'level': str})
  except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
    raise OsteoDataError(path, f'not a readable CSV ({" ".join(str(e).split())})') from None
  return check_predictions(df, path)


def write_predictions(pred: pd.DataFrame, path: str):
  """Write a predictions table as CSV, atomically (temporary file + rename)."""
  with io.atomic_path(path) as tmp:
    pred.to_csv(tmp, index=False)


def score_column(pred: pd.DataFrame) -> str:
  """The column ranked and thresholded: `score` when present, else `prob`."""
  return 'score' if 'score' in pred.columns else 'prob'


# ----------------------------------------------------------------------------------------------
# Thresholds, patients, per-site metrics.

def patient_table(pred: pd.DataFrame) -> pd.DataFrame:
  """One row per patient: patient_id, site, split, label (any vertebra), score.

  score is `patient_score` where the table has it, else the maximum vertebra score
  (metrics.patient_level).
  """
  col = score_column(pred)
  ids, y, s = pred.patient_id.to_numpy(), pred.label.to_numpy(), pred[col].to_numpy()
  label, score = metrics.patient_level(ids, y, s)
  first = pred.groupby('patient_id', sort=True)[['site', 'split']].first()
  out = first.reset_index().assign(label=label.astype(int), score=score)
  if 'patient_score' in pred.columns:
    out['score'] = pred.groupby('patient_id', sort=True).patient_score.first().to_numpy()
  return out


def thresholds(pred: pd.DataFrame) -> dict:
  """{'vertebra': t, 'patient': t, 'vertebra_f1': t, 'patient_f1': t, 'rule': str} for a
  checked table (see the module doc). The *_f1 thresholds maximise F1 on the same validation
  cases (the second rule of every table: F1 at them is reported beside the Youden F1)."""
  if 'threshold' in pred.columns:
    t = float(pred.threshold.iloc[0])
    return dict(vertebra=t, patient=t, vertebra_f1=t, patient_f1=t, rule='fixed cut-off')
  col = score_column(pred)
  v = pred[pred.split == 'valid']
  if len(v) == 0:
    raise OsteoDataError('predictions', 'no validation rows to choose the threshold on')
  if v.label.nunique() < 2 and col == 'prob':
    return dict(vertebra=0.5, patient=0.5, vertebra_f1=0.5, patient_f1=0.5, rule=FALLBACK_RULE)
  try:
    t = metrics.youden_threshold(v.label, v[col])
    t_f1 = metrics.f1_threshold(v.label, v[col])
    if 'patient_score' in pred.columns:
      p = patient_table(v)
      return dict(vertebra=t, patient=metrics.youden_threshold(p.label, p.score),
                  vertebra_f1=t_f1, patient_f1=metrics.f1_threshold(p.label, p.score),
                  rule="Youden's J on validation vertebrae; patients: Youden's J on "
                       'validation patient scores')
  except ValueError as e:
    raise OsteoDataError('predictions', f'validation split: {e}') from None
  return dict(vertebra=t, patient=t, vertebra_f1=t_f1, patient_f1=t_f1, rule=THRESHOLD_RULE)


def _binary_row(y, score, thr, thr_f1) -> dict:
  y = np.asarray(y, int)
  score = np.asarray(score, float)
  row = metrics.binary_metrics(y, score >= thr)
  row['f1_f1thr'] = metrics.binary_metrics(y, score >= thr_f1)['f1']
  row['auc'] = metrics.auc(y, score)
  row['threshold'] = float(thr)
  row['threshold_f1'] = float(thr_f1)
  return row


def evaluate(pred: pd.DataFrame, split: str = 'test', site_groups=None) -> pd.DataFrame:
  """Per-site metrics of one predictions table on `split`, thresholds from validation.

  Returns a DataFrame with one row per (level, site) that has cases: columns level, site,
  acc, sen, spe, f1, auc, n, positives, threshold, bmd_mae, bmd_r, bmd_r2, bmd_n (BMD columns
  on vertebra rows, NaN where bmd_pred is absent).
  """
  pred = check_predictions(pred)
  site_groups = site_groups or SITE_GROUPS
  thr = thresholds(pred)
  d = pred[pred.split == split]
  pats = patient_table(d) if len(d) else None
  col = score_column(pred)
  rows = []
  for name, sites in site_groups.items():
    dv = d[d.site.isin(sites)]
    if len(dv) == 0:
      continue
    row = dict(level='vertebra', site=name, **_binary_row(dv.label, dv[col], thr['vertebra'],
                                                          thr['vertebra_f1']))
    bm = metrics.regression_metrics(dv.bmd, dv.bmd_pred)
    row.update(bmd_mae=bm['mae'], bmd_r=bm['r'], bmd_r2=bm['r2'], bmd_n=bm['n'])
    rows.append(row)
    dp = pats[pats.site.isin(sites)]
    rows.append(dict(level='patient', site=name, **_binary_row(dp.label, dp.score,
                                                               thr['patient'],
                                                               thr['patient_f1'])))
  out = pd.DataFrame(rows)
  order = {k: i for i, k in enumerate(site_groups)}
  out = out.sort_values(['level', 'site'], key=lambda c: c.map(order) if c.name == 'site'
                        else c.map({'vertebra': 0, 'patient': 1}), kind='stable')
  return out.reset_index(drop=True)


def aggregate(per_seed: Sequence[pd.DataFrame]) -> pd.DataFrame:
  """Mean and sample SD over seeds of `evaluate` frames of one model.

  Returns one row per (level, site): for each metric m the columns m (mean) and m_sd (SD,
  ddof = 1; NaN with one seed), plus n_seeds. NaN values (e.g. AUC of a site without
  positives) are left out of the mean of that metric.
  """
  if not per_seed:
    raise ValueError('aggregate needs at least one evaluated seed')
  cat = pd.concat([f.assign(seed=i) for i, f in enumerate(per_seed)], ignore_index=True)
  value_cols = [c for c in METRICS + BMD_METRICS + COUNTS + ('bmd_n', 'threshold',
                                                           'threshold_f1')
                if c in cat.columns]
  g = cat.groupby(['level', 'site'], sort=False)[value_cols]
  mean = g.mean()
  sd = g.std(ddof=1).add_suffix('_sd')
  out = pd.concat([mean, sd], axis=1)
  out['n_seeds'] = cat.groupby(['level', 'site'], sort=False).seed.nunique()
  return out.reset_index()


# ----------------------------------------------------------------------------------------------
# A report over several models (each with one or more seeds).

def _as_list(preds) -> list:
  return [preds] if isinstance(preds, pd.DataFrame) else list(preds)


def summarize(models: Mapping[str, Sequence[pd.DataFrame] | pd.DataFrame], split: str = 'test',
              base: str | None = None, deterministic: Sequence[str] = ()) -> dict:
  """JSON-ready results of several models (name -> predictions table or list, one per seed).

  deterministic: the models whose one table stands for every seed (baselines, oracles); in
  the paired tests they pair with each seed of the other model (significance.compare_models).

  {'split', 'threshold_rule', 'models': {name: {'n_seeds', 'thresholds': [per seed],
  'mean_sd': [rows of `aggregate`], 'per_seed': [rows of `evaluate` + seed]}},
  'base', 'significance': {name: rows of significance.compare_models}} (the last two when
  a base model is named).
  """
  from osteojax.evaluate import significance   # significance builds on this module
  models = {k: [check_predictions(p, f'{k} seed {i}') for i, p in enumerate(_as_list(v))]
            for k, v in models.items()}
  out = dict(split=split, threshold_rule=THRESHOLD_RULE, models={})
  for name, preds in models.items():
    frames = [evaluate(p, split) for p in preds]
    out['models'][name] = dict(
        n_seeds=len(preds), thresholds=[thresholds(p) for p in preds],
        mean_sd=_records(aggregate(frames)),
        per_seed=_records(pd.concat([f.assign(seed=i) for i, f in enumerate(frames)])))
  if base is not None:
    if base not in models:
      raise ValueError(f'base model {base!r} is not among {sorted(models)}')
    out['base'] = base
    out['significance'] = {
        name: _records(significance.compare_models(
            models[base], preds, split, base_deterministic=base in deterministic,
            other_deterministic=name in deterministic))
        for name, preds in models.items() if name != base}
  return out


def _plain(v):
  """numpy scalars -> Python, NaN -> None, recursively through lists (valid JSON)."""
  if isinstance(v, (list, tuple, np.ndarray)):
    return [_plain(x) for x in v]
  if isinstance(v, np.generic):
    v = v.item()
  if isinstance(v, float) and math.isnan(v):
    return None
  return v


def _records(df: pd.DataFrame) -> list:
  """DataFrame -> list of dicts of plain values (NaN as None)."""
  return [{k: _plain(v) for k, v in r.items()} for r in df.to_dict('records')]


def _fmt(mean, sd, pct):
  if mean is None or (isinstance(mean, float) and math.isnan(mean)):
    return '-'
  k = 100.0 if pct else 1.0
  digits = 1 if pct else 3
  s = f'{mean * k:.{digits}f}'
  if sd is not None and not (isinstance(sd, float) and math.isnan(sd)):
    s += f' ± {sd * k:.{digits}f}'
  return s


def _fmt_p(p):
  if p is None or (isinstance(p, float) and math.isnan(p)):
    return '-'
  return f'{p:.2g}' if p >= 1e-4 else '<1e-4'


def _stars(p):
  if p is None or (isinstance(p, float) and math.isnan(p)):
    return ''
  return '***' if p < 0.001 else '**' if p < 0.01 else '*' if p < 0.05 else 'ns'


def _sig_row(sig: dict, name: str, level: str, site: str) -> dict:
  """The significance row of model `name` at (level, site); {} when there is none."""
  t = [x for x in sig.get(name, []) if x['level'] == level and x['site'] == site]
  return t[0] if t else {}


def markdown_table(summary: dict, level: str = 'vertebra', sites: Sequence[str] = SITES,
                   columns: Sequence[str] = METRICS, p_metric: str = 'f1') -> str:
  """One Markdown table at `level`: a row per (site, model), a column per metric, mean ± SD.

  ACC, SEN, SPE, F1 in %, AUC and BMD metrics as they are; '-' where undefined (e.g. SEN of
  a site without positives). With a base model in the summary, a P column gives the paired
  t-test across seeds on `p_metric` against the base ('*' p < 0.05, '**' < 0.01, '***' <
  0.001, 'ns' otherwise; '-' when it cannot be computed, e.g. one seed on each side).
  """
  sig = summary.get('significance', {})
  head = ['site', 'model', 'seeds'] + [HEADERS.get(c, c.upper().replace('BMD_', 'BMD '))
                                       for c in columns]
  if sig:
    head += [f'P ({p_metric.upper()})', 'DeLong p', 'McNemar p']
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for s in sites:
    for name, res in summary['models'].items():
      rows = {(r['level'], r['site']): r for r in res['mean_sd']}
      if (level, s) not in rows:
        continue
      r = rows[(level, s)]
      cells = [s, name, str(res['n_seeds'])]
      cells += [_fmt(r.get(c), r.get(c + '_sd'), c in PERCENT)
                for c in columns]
      if sig:
        if name == summary.get('base'):
          cells += ['base', '', '']
        else:
          t = _sig_row(sig, name, level, s)
          cells.append(_stars(t.get(f'ttest_{p_metric}_p')) or '-')
          cells += [_fmt_p(t.get('delong_p')), _fmt_p(t.get('mcnemar_p'))]
      lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def compact_table(summary: dict, metric: str = 'f1', level: str = 'vertebra',
                  sites: Sequence[str] = SITES + ('internal',)) -> str:
  """The paper's Table 4 layout: a row per model, a column per site, one metric (mean ± SD)."""
  head = ['model', 'seeds'] + list(sites)
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  pct = metric in PERCENT
  for name, res in summary['models'].items():
    rows = {(r['level'], r['site']): r for r in res['mean_sd']}
    cells = [name, str(res['n_seeds'])]
    for s in sites:
      r = rows.get((level, s), {})
      cells.append(_fmt(r.get(metric), r.get(metric + '_sd'), pct))
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def paper_table(summary: dict, rows: Sequence[tuple], level: str = 'vertebra',
                metric: str = 'f1', sites: Sequence[str] = SITES,
                extra: Sequence[str] = ('auc',)) -> str:
  """The paper's Tables 2-5 layout: a row per model in the paper's order, its labels (encoder,
  pre-training, loss), then `metric` per site (mean ± SD over seeds, with the paired t-test's
  stars against the summary's base, as the paper marks P) and `extra` metrics on the internal
  sites A-C. rows: (name in summary, *labels); a name without results is kept, with 0 seeds
  and '-', so the table shows what has not run. Stars come from the summary's paired tests,
  which need seeds on both sides (a stochastic model of one seed has none; see summarize).
  """
  sig = summary.get('significance', {})
  head = (['model', 'pre-training', 'loss', 'seeds'] + [f'{metric.upper()} {s}' for s in sites]
          + [f'{c.upper()} internal' for c in extra])
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for name, *labels in rows:
    res = summary['models'].get(name)
    by_site = {(r['level'], r['site']): r for r in res['mean_sd']} if res else {}
    cells = list(labels) + [str(res['n_seeds']) if res else '0']
    for s in sites:
      r = by_site.get((level, s), {})
      cell = _fmt(r.get(metric), r.get(metric + '_sd'), metric in PERCENT)
      star = _stars(_sig_row(sig, name, level, s).get(f'ttest_{metric}_p'))
      if name == summary.get('base') and res:
        star = '(base)'
      cells.append(f'{cell} {star}' if star and star != 'ns' and cell != '-' else cell)
    r = by_site.get((level, 'internal'), {})
    cells += [_fmt(r.get(c), r.get(c + '_sd'), c in PERCENT) for c in extra]
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def markdown_report(summary: dict, sites: Sequence[str] = SITES + ('internal',)) -> str:
  """Vertebra, patient and (where any model predicts BMD) BMD tables, with their rules."""
  parts = [f'Split: {summary["split"]}. Threshold: {summary["threshold_rule"]}, unless said '
           'below. ACC, SEN, SPE, F1 in %; mean ± SD over seeds.']
  for name, res in summary['models'].items():
    rules = sorted({t['rule'] for t in res['thresholds']} - {THRESHOLD_RULE})
    if rules:
      parts.append(f'Threshold of {name}: {"; ".join(rules)}.')
  if 'base' in summary:
    parts.append(f'P: paired t-test across seeds on F1 against {summary["base"]}; DeLong (AUC) '
                 'and exact McNemar (accuracy) p: median over seeds, same ROIs.')
  parts += ['', '### Vertebra level', '', markdown_table(summary, 'vertebra', sites), '',
            '### Patient level (positive if any vertebra is)', '',
            markdown_table(summary, 'patient', sites)]
  has_bmd = any(r.get('bmd_n') for m in summary['models'].values() for r in m['mean_sd'])
  if has_bmd:
    bmd = dict(summary, models={k: v for k, v in summary['models'].items()
                                if any(r.get('bmd_n') for r in v['mean_sd'])})
    bmd.pop('significance', None)
    parts += ['', '### BMD (g/cm²): MAE, Pearson r, R²', '',
              markdown_table(bmd, 'vertebra', sites, BMD_METRICS)]
  return '\n'.join(parts) + '\n'


# ----------------------------------------------------------------------------------------------
# ROC curves.

def _roc_points(y, score):
  from sklearn.metrics import roc_curve
  fpr, tpr, _ = roc_curve(np.asarray(y, int), np.asarray(score, float))
  return fpr, tpr


def _level_frame(pred, level, split):
  d = pred[pred.split == split]
  if level == 'patient':
    p = patient_table(d)
    return p.site.to_numpy(), p.label.to_numpy(), p.score.to_numpy()
  return d.site.to_numpy(), d.label.to_numpy(), d[score_column(d)].to_numpy()


ROC_LEGEND_INSIDE = 8   # models whose AUC legend fits inside a panel; more go below it


def plot_roc(models: Mapping[str, Sequence[pd.DataFrame] | pd.DataFrame], path: str,
             level: str = 'vertebra', split: str = 'test', sites: Sequence[str] = SITES):
  """ROC curves on `split`, one panel per site, the models overlaid (the paper's Fig. 3).

  A model with several seeds is drawn as its vertically averaged ROC (TPR averaged at fixed
  FPR) and labelled with its mean ± SD AUC; a dot marks its operating point at its threshold
  (mean over seeds). Panels without both classes say so. A model keeps its colour in every
  panel (tab10, tab20 past ten models, dashed past twenty); past ROC_LEGEND_INSIDE models the
  legends go below the panels.
  """
  import matplotlib
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt

  grid = np.linspace(0, 1, 201)
  many = len(models) > ROC_LEGEND_INSIDE      # then the legends go below the panels
  height = 3.8 + (0.15 * len(models) if many else 0)
  fig, axes = plt.subplots(1, len(sites), figsize=(3.6 * len(sites), height), squeeze=False)
  colours = plt.get_cmap('tab20' if len(models) > 10 else 'tab10').colors
  for ax, site in zip(axes[0], sites):
    members = SITE_GROUPS.get(site, (site,))
    drawn = 0
    for i, (name, preds) in enumerate(models.items()):
      tprs, aucs, ops = [], [], []
      for p in _as_list(preds):
        p = check_predictions(p, name)
        s, y, sc = _level_frame(p, level, split)
        keep = np.isin(s, members)
        y, sc = y[keep], sc[keep]
        if len(np.unique(y)) < 2:
          continue
        fpr, tpr = _roc_points(y, sc)
        tprs.append(np.interp(grid, fpr, tpr))
        aucs.append(metrics.auc(y, sc))
        m = metrics.binary_metrics(y, sc >= thresholds(p)[level])
        ops.append((1 - m['spe'], m['sen']))
      if not tprs:
        continue
      lab = f'{name} ({np.mean(aucs):.3f}' + (f' ± {np.std(aucs, ddof=1):.3f})'
                                               if len(aucs) > 1 else ')')
      curve = np.mean(tprs, 0)
      curve[0] = 0.0
      line, = ax.plot(grid, curve, lw=1.4, label=lab, c=colours[i % len(colours)],
                      ls=('-', '--')[i // len(colours) % 2])
      ax.plot(*np.mean(ops, 0), 'o', ms=4, c=line.get_color())   # the operating point
      drawn += 1
    ax.plot([0, 1], [0, 1], ls=':', c='grey', lw=0.8)
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel='1 - specificity', aspect='equal',
           title=f'Site {site}' if site in SITES else site)
    if drawn and many:
      ax.legend(loc='upper center', bbox_to_anchor=(0.5, -0.16), fontsize=6.5, title='AUC',
                title_fontsize=7)
    elif drawn:
      ax.legend(loc='lower right', fontsize=6.5, title='AUC', title_fontsize=7)
    else:
      ax.text(0.5, 0.5, 'no ROC:\nfewer than two classes', ha='center', va='center', fontsize=9)
  axes[0][0].set_ylabel('sensitivity')
  fig.suptitle(f'ROC, {level} level, {split} split', fontsize=10)
  fig.tight_layout()
  with io.atomic_path(path) as tmp:
    fig.savefig(tmp, dpi=130, bbox_inches='tight')
  plt.close(fig)


def write_report(models: Mapping[str, Sequence[pd.DataFrame] | pd.DataFrame], out_dir: str,
                 split: str = 'test', base: str | None = None,
                 sites: Sequence[str] = SITES, deterministic: Sequence[str] = ()) -> dict:
  """Evaluate models and write results.json, results.md, roc_vertebra.png, roc_patient.png.

  models: name -> predictions table or list of tables (one per seed); deterministic: as in
  summarize. Returns the summary.
  """
  summary = summarize(models, split, base, deterministic)
  os.makedirs(out_dir, exist_ok=True)
  io.atomic_write_text(os.path.join(out_dir, 'results.json'),
                       json.dumps(summary, indent=1, allow_nan=False))
  io.atomic_write_text(os.path.join(out_dir, 'results.md'),
                       markdown_report(summary, tuple(sites) + ('internal',)))
  for level in LEVELS:
    plot_roc(models, os.path.join(out_dir, f'roc_{level}.png'), level, split, sites)
  return summary
