"""Paired tests against hand computations, the O(m n) DeLong definition and a bootstrap."""
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from osteojax.evaluate import diagnosis, significance


def _psi(x, y):
  return np.where(x > y, 1.0, np.where(x == y, 0.5, 0.0))


def _delong_by_definition(y, scores):
  """DeLong 1988 structural components from all (positive, negative) pairs: O(m n)."""
  y = np.asarray(y).astype(bool)
  scores = np.atleast_2d(scores)
  v10 = np.array([[_psi(xi, s[~y]).mean() for xi in s[y]] for s in scores])
  v01 = np.array([[_psi(s[y], yj).mean() for yj in s[~y]] for s in scores])
  m, n = y.sum(), (~y).sum()
  return v10.mean(1), np.cov(v10) / m + np.cov(v01) / n


def test_delong_variance_by_hand():
  # X = (3, 1), Y = (2, 0): V10 = (1, 1/2), V01 = (1/2, 1), AUC 3/4,
  # var = var(V10) / 2 + var(V01) / 2 = 1/8 / 2 + 1/8 / 2 = 1/8.
  aucs, cov = significance.delong_covariance([1, 1, 0, 0], [3, 1, 2, 0])
  assert aucs[0] == 0.75 and cov[0, 0] == pytest.approx(1 / 8)


def test_fast_delong_equals_definition_with_ties():
  rng = np.random.default_rng(0)
  y = rng.random(40) < 0.4
  s1 = np.round(rng.normal(size=40) + y, 1)           # rounding makes ties
  s2 = np.round(0.5 * s1 + rng.normal(size=40), 1)
  aucs, cov = significance.delong_covariance(y, np.stack([s1, s2]))
  aucs_ref, cov_ref = _delong_by_definition(y, np.stack([s1, s2]))
  np.testing.assert_allclose(aucs, aucs_ref, rtol=1e-12)
  np.testing.assert_allclose(cov, cov_ref, rtol=1e-10)
  r = significance.delong_test(y, s1, s2)
  z = (aucs_ref[0] - aucs_ref[1]) / np.sqrt(cov_ref[0, 0] + cov_ref[1, 1] - 2 * cov_ref[0, 1])
  assert r['z'] == pytest.approx(z) and r['p'] == pytest.approx(2 * stats.norm.sf(abs(z)))


def test_delong_se_agrees_with_bootstrap():
  rng = np.random.default_rng(1)
  n = 300
  y = rng.random(n) < 0.3
  s1 = rng.normal(size=n) + 1.2 * y
  s2 = 0.6 * s1 + rng.normal(size=n) * 0.8 + 0.3 * y
  se = significance.delong_test(y, s1, s2)['se']
  pos, neg = np.flatnonzero(y), np.flatnonzero(~y)

  def auc(idx, s):
    r = stats.rankdata(s[idx])
    yy = y[idx]
    m = yy.sum()
    return (r[yy].sum() - m * (m + 1) / 2) / (m * (len(idx) - m))

  diffs = []
  for _ in range(1000):   # stratified bootstrap: class sizes kept
    idx = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
    diffs.append(auc(idx, s1) - auc(idx, s2))
  assert np.std(diffs, ddof=1) == pytest.approx(se, rel=0.15)


def test_delong_degenerate_cases():
  y = [1, 1, 0, 0, 1, 0]
  s = [0.9, 0.8, 0.1, 0.3, 0.7, 0.2]
  r = significance.delong_test(y, s, s)
  assert r['diff'] == 0 and r['p'] == 1.0
  assert np.isnan(significance.delong_test([1, 0, 0], [1, 2, 3], [3, 2, 1])['p'])


def test_mcnemar_exact_by_hand():
  y = np.zeros(8, int)
  a = np.array([0, 0, 0, 0, 0, 0, 0, 0])     # all right
  b = np.array([1, 1, 1, 1, 1, 0, 0, 0])     # 5 wrong where a is right
  r = significance.mcnemar_test(y, a, b)
  assert (r['b'], r['c']) == (5, 0) and r['p'] == pytest.approx(2 * 0.5 ** 5)
  r = significance.mcnemar_test(y, b, a)
  assert (r['b'], r['c']) == (0, 5) and r['p'] == pytest.approx(0.0625)
  # b = 1, c = 2: P(X <= 1) + P(X >= 2) for Bin(3, 1/2) covers everything -> 1
  assert significance.mcnemar_test([1, 1, 1], [1, 0, 0], [0, 1, 1])['p'] == 1.0
  assert significance.mcnemar_test([1, 0], [1, 0], [1, 0])['p'] == 1.0


def test_paired_ttest_by_hand():
  a, b = [3.0, 5.0, 7.0], [2.0, 3.0, 4.0]
  # d = 1, 2, 3: mean 2, sd 1, t = 2 / (1 / sqrt 3), df 2
  t = 2 * np.sqrt(3)
  r = significance.paired_ttest(a, b)
  assert r['t'] == pytest.approx(t) and r['p'] == pytest.approx(2 * stats.t.sf(t, 2))
  assert r['mean_diff'] == 2 and r['n'] == 3
  assert np.isnan(significance.paired_ttest([1.0], [2.0])['p'])
  assert np.isnan(significance.paired_ttest([1.0, 2.0], [0.0, 1.0])['p'])   # no spread
  assert significance.paired_ttest([1.0, np.nan, 3.0, 4.0], [0, 0, 0, 2])['n'] == 3


def _tables(seed, shift):
  labels = np.random.default_rng(99)     # the same cases and labels for every table
  rng = np.random.default_rng(seed)
  rows = []
  for split, n in (('valid', 30), ('test', 40)):
    for i in range(n):
      y = int(labels.random() < 0.4)
      site = 'ABCD'[i % 4] if split == 'test' else 'ABC'[i % 3]
      rows.append(dict(roi_id=f'{split}{i}', patient_id=f'{split}p{i // 2}-{site}', site=site,
                       split=split, device='hologic', level='L1', label=y,
                       prob=float(1 / (1 + np.exp(-(shift * (2 * y - 1) + rng.normal())))),
                       bmd=np.nan, bmd_pred=np.nan))
  return pd.DataFrame(rows)


def test_compare_models_pairs_on_roi_ids():
  base = [_tables(s, 0.5) for s in range(3)]
  other = [_tables(s, 2.0).sample(frac=1, random_state=s) for s in range(3)]   # order shuffled
  out = significance.compare_models(base, other)
  r = out[(out.level == 'vertebra') & (out.site == 'all')].iloc[0]
  assert r.n_seeds == 3 and len(r.delong_ps) == 3
  assert r.ttest_auc_diff > 0 and r.delong_p < 0.05
  # A deterministic single table pairs with every seed; one seed of a stochastic model pairs
  # with the first seed only, and gets no t-test.
  one = significance.compare_models(base[:1], other, base_deterministic=True)
  assert one.n_seeds.iloc[0] == 3 and len(one.delong_ps.iloc[0]) == 3
  two = significance.compare_models(base[:2], other, base_deterministic=True)
  assert two.n_seeds.iloc[0] == 3                      # its first table stands for every seed
  assert np.isfinite(one[one.site == 'all'].ttest_auc_p).all()
  single = significance.compare_models(base, other[:1])
  assert (single.n_seeds == 1).all() and np.isnan(single.ttest_auc_p).all()
  assert np.isfinite(single[single.site == 'all'].delong_p).all()
  # summarize declares which models are deterministic.
  summary = diagnosis.summarize({'b': base, 'rule': base[0], 'run': other[0]}, base='b',
                                deterministic=('rule',))
  sig = {k: {(r['level'], r['site']): r for r in v} for k, v in summary['significance'].items()}
  assert sig['rule'][('vertebra', 'all')]['n_seeds'] == 3
  assert sig['run'][('vertebra', 'all')]['n_seeds'] == 1
  assert sig['run'][('vertebra', 'all')]['ttest_f1_p'] is None or np.isnan(
      sig['run'][('vertebra', 'all')]['ttest_f1_p'])
  with pytest.raises(ValueError, match='do not cover the same cases'):
    significance.compare_models(base[:1], [other[0][other[0].roi_id != 'test3']])
  flipped = other[0].assign(label=1 - other[0].label)
  with pytest.raises(ValueError, match='disagree on labels'):
    significance.compare_models(base[:1], [flipped])
