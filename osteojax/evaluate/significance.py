"""Paired significance tests of a model against a base model on the same vertebrae.

- DeLong's test for two correlated ROC AUCs (DeLong, DeLong & Clarke-Pearson 1988), computed
  with the fast midrank algorithm of Sun & Xu (2014). No maintained library in our pinned set
  ships it (scipy, scikit-learn and statsmodels do not; the PyPI packages that do are small
  single-author ones), so it is implemented here and tested against the O(m n) definition.
- McNemar's test on the paired correct / wrong calls (exact: a two-sided binomial test on the
  discordant pairs, scipy.stats.binomtest).
- The paired t-test across seeds of a metric (scipy.stats.ttest_rel), as the paper reports.

Pairs are formed by joining on roi_id (patients: on patient_id); the two tables must hold the
same ROIs with the same labels.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from osteojax.evaluate import diagnosis


def _midranks(x: np.ndarray) -> np.ndarray:
  """1-based ranks of x, ties sharing the mean of their ranks."""
  return stats.rankdata(x, method='average')


def delong_covariance(y, scores) -> tuple[np.ndarray, np.ndarray]:
  """AUCs [K] and their DeLong covariance [K, K] for K score vectors on the same cases.

  y: [N] 0/1; scores: [K, N] (or [N]). Sun & Xu (2014): with m positives X and n negatives Y,
  the structural components are V10_i = (rank of X_i among all - rank among X) / n and
  V01_j = 1 - (rank of Y_j among all - rank among Y) / m (midranks), the AUC is their mean and
  Cov = S10 / m + S01 / n with S10, S01 the sample covariances (ddof = 1) of the components.
  """
  y = np.asarray(y).astype(bool)
  scores = np.atleast_2d(np.asarray(scores, np.float64))
  m, n = int(y.sum()), int((~y).sum())
  if m < 2 or n < 2:
    raise ValueError(f'DeLong needs at least 2 positives and 2 negatives, got {m} and {n}')
  x, z = scores[:, y], scores[:, ~y]
  v10 = np.empty_like(x)
  v01 = np.empty_like(z)
  for k in range(len(scores)):
    r_all = _midranks(np.concatenate([x[k], z[k]]))
    v10[k] = (r_all[:m] - _midranks(x[k])) / n
    v01[k] = 1.0 - (r_all[m:] - _midranks(z[k])) / m
  aucs = v10.mean(1)
  cov = np.atleast_2d(np.cov(v10, ddof=1)) / m + np.atleast_2d(np.cov(v01, ddof=1)) / n
  return aucs, cov


def delong_test(y, score_a, score_b) -> dict:
  """DeLong's test of AUC(score_a) = AUC(score_b) on the same cases.

  Returns auc_a, auc_b, diff (a - b), se (of the difference), z, p (two-sided, normal).
  p is 1 when the difference and its variance are both 0 (e.g. identical rankings), NaN
  when a class has fewer than 2 cases.
  """
  nan = float('nan')
  try:
    aucs, cov = delong_covariance(y, np.stack([np.asarray(score_a, float),
                                               np.asarray(score_b, float)]))
  except ValueError:
    return dict(auc_a=nan, auc_b=nan, diff=nan, se=nan, z=nan, p=nan)
  diff = float(aucs[0] - aucs[1])
  var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
  se = float(np.sqrt(max(var, 0.0)))
  if se <= 1e-15:
    z, p = (0.0, 1.0) if abs(diff) <= 1e-15 else (float(np.sign(diff) * np.inf), 0.0)
  else:
    z = diff / se
    p = float(2 * stats.norm.sf(abs(z)))
  return dict(auc_a=float(aucs[0]), auc_b=float(aucs[1]), diff=diff, se=se, z=float(z), p=p)


def mcnemar_test(y, pred_a, pred_b) -> dict:
  """Exact McNemar test of equal accuracy of two sets of 0/1 calls on the same cases.

  b: cases a gets right and b wrong; c: the reverse. p = two-sided binomial test of b out of
  b + c at 1/2 (1 when there are no discordant cases).
  """
  y = np.asarray(y).astype(bool)
  ok_a = np.asarray(pred_a).astype(bool) == y
  ok_b = np.asarray(pred_b).astype(bool) == y
  b = int(np.sum(ok_a & ~ok_b))
  c = int(np.sum(~ok_a & ok_b))
  p = 1.0 if b + c == 0 else float(stats.binomtest(b, b + c, 0.5).pvalue)
  return dict(b=b, c=c, p=p)


def paired_ttest(values_a, values_b) -> dict:
  """Paired t-test (scipy.stats.ttest_rel) of a metric over seeds: a[i] pairs with b[i].

  Pairs with a NaN are dropped. Returns mean_diff (a - b), t, p, n; t and p are NaN with
  fewer than 2 pairs or when every difference is the same (no spread to test against).
  """
  a = np.asarray(values_a, np.float64)
  b = np.asarray(values_b, np.float64)
  if a.shape != b.shape:
    raise ValueError(f'paired values need the same length, got {len(a)} and {len(b)}')
  ok = np.isfinite(a) & np.isfinite(b)
  a, b = a[ok], b[ok]
  nan = float('nan')
  if len(a) < 2:
    return dict(mean_diff=float(np.mean(a - b)) if len(a) else nan, t=nan, p=nan, n=len(a))
  d = a - b
  if np.ptp(d) == 0:   # no spread of the differences: the t statistic is undefined
    return dict(mean_diff=float(d.mean()), t=nan, p=nan, n=len(a))
  r = stats.ttest_rel(a, b)
  return dict(mean_diff=float(d.mean()), t=float(r.statistic), p=float(r.pvalue), n=len(a))


def _paired(base: pd.DataFrame, other: pd.DataFrame, key: str, what: str) -> pd.DataFrame:
  """Inner join of two tables on key; they must cover the same cases with the same labels."""
  j = base.merge(other, on=key, suffixes=('_a', '_b'), how='outer', indicator=True)
  if (j._merge != 'both').any():
    miss = j[key][j._merge != 'both'].iloc[0]
    raise ValueError(f'{what}: the two models do not cover the same cases ({miss!r} is in '
                     'only one of them)')
  if (j.label_a != j.label_b).any():
    raise ValueError(f'{what}: the two models disagree on labels ({key} '
                     f'{j[key][j.label_a != j.label_b].iloc[0]!r})')
  return j


def compare_models(base: Sequence[pd.DataFrame], other: Sequence[pd.DataFrame],
                   split: str = 'test', site_groups=None, base_deterministic: bool = False,
                   other_deterministic: bool = False) -> pd.DataFrame:
  """Paired tests of `other` against `base` (lists of predictions tables, one per seed).

  Seeds are paired by position (seed i of one with seed i of the other). A side declared
  deterministic (a baseline, the oracle: the same table every seed) with a single table is
  paired with every seed of the other; a single table of a stochastic model pairs with the
  other side's first seed only, so n_seeds is 1 and the t-tests are NaN (one run says nothing
  about the spread over seeds). Sides of 2 and 3 seeds pair their first two (by position, not
  by seed number). Per (level, site):
  ttest_{acc,f1,auc}_p: paired t-test across seeds of that metric (its mean_diff is other -
  base, in ttest_f1_diff etc.); delong_p, mcnemar_p: median over seeds of the per-seed DeLong
  and McNemar p-values, with the per-seed values in delong_ps, mcnemar_ps. Thresholds are each
  table's own (see diagnosis.thresholds).
  """
  site_groups = site_groups or diagnosis.SITE_GROUPS
  base = [diagnosis.check_predictions(p, f'base seed {i}') for i, p in enumerate(base)]
  other = [diagnosis.check_predictions(p, f'model seed {i}') for i, p in enumerate(other)]
  if base_deterministic:                   # the same table every seed: its first stands for all
    base = base[:1] * len(other)
  if other_deterministic:
    other = other[:1] * len(base)
  k = min(len(base), len(other))
  ev_a = [diagnosis.evaluate(p, split, site_groups) for p in base[:k]]
  ev_b = [diagnosis.evaluate(p, split, site_groups) for p in other[:k]]
  per_seed = {}   # (level, site) -> list of (delong p, mcnemar p)
  for pa, pb in zip(base[:k], other[:k]):
    ta, tb = diagnosis.thresholds(pa), diagnosis.thresholds(pb)
    da, db = pa[pa.split == split], pb[pb.split == split]
    ca, cb = diagnosis.score_column(pa), diagnosis.score_column(pb)
    frames = {
        'vertebra': _paired(da[['roi_id', 'site', 'label', ca]].rename(columns={ca: 's'}),
                            db[['roi_id', 'label', cb]].rename(columns={cb: 's'}),
                            'roi_id', 'vertebra pairs'),
        'patient': _paired(diagnosis.patient_table(da)[['patient_id', 'site', 'label', 'score']]
                           .rename(columns={'score': 's'}),
                           diagnosis.patient_table(db)[['patient_id', 'label', 'score']]
                           .rename(columns={'score': 's'}),
                           'patient_id', 'patient pairs'),
    }
    for level, j in frames.items():
      for name, sites in site_groups.items():
        js = j[j.site.isin(sites)]
        if len(js) == 0:
          continue
        y = js.label_a.to_numpy()
        dl = delong_test(y, js.s_b, js.s_a)
        mc = mcnemar_test(y, js.s_b >= tb[level], js.s_a >= ta[level])
        per_seed.setdefault((level, name), []).append((dl['p'], mc['p']))
  rows = []
  for (level, name), ps in per_seed.items():
    row = dict(level=level, site=name, n_seeds=k)
    for m in ('acc', 'f1', 'auc'):
      va = [float(e.set_index(['level', 'site']).loc[(level, name), m]) for e in ev_a]
      vb = [float(e.set_index(['level', 'site']).loc[(level, name), m]) for e in ev_b]
      t = paired_ttest(vb, va)
      row[f'ttest_{m}_diff'], row[f'ttest_{m}_p'] = t['mean_diff'], t['p']
    dps, mps = [p[0] for p in ps], [p[1] for p in ps]
    row['delong_p'] = float(np.nanmedian(dps)) if np.isfinite(dps).any() else float('nan')
    row['mcnemar_p'] = float(np.median(mps))
    row['delong_ps'], row['mcnemar_ps'] = dps, mps
    rows.append(row)
  return pd.DataFrame(rows)
