"""The oracle's analytic posterior against Monte Carlo draws of the generator's own DXA noise."""
import numpy as np
import pandas as pd
import pytest

from osteojax.data import cohort, oracle
from osteojax.data import params as P
from osteojax.evaluate import metrics


@pytest.fixture(scope='module')
def labeled_rows():
  t = cohort.sample_cohort(0.1, seed=2)
  return t[t.split != 'pretrain']


def _mc_labels(row, device, resid, rng):
  """Label draws for one vertebra with the given per-draw maker residuals."""
  out = np.empty(len(resid), bool)
  for k, r in enumerate(resid):
    e = cohort.draw_elevation(rng, row.age, row.level, row.sex == 'F', row.abmd_true)
    bmd = cohort.read_dxa(rng, device, row.abmd_true, e, r)
    out[k] = cohort.t_score(device, bmd, row.sex, row.level) <= P.OSTEOPOROSIS_T
  return out


def test_vertebra_posterior_matches_monte_carlo(labeled_rows):
  # Rows near the decision boundary, old men (facets) and women: the interesting cases.
  vert, _ = oracle.oracle_scores(labeled_rows)
  pick = np.argsort(np.abs(vert - 0.5))[:3].tolist()
  pick += [int(np.argmax((labeled_rows.sex == 'M').to_numpy() * labeled_rows.age.to_numpy()))]
  rows = labeled_rows.iloc[pick]
  want, _ = oracle.oracle_scores(rows)
  rng = np.random.default_rng(0)
  n = 4000
  for (_, row), p in zip(rows.iterrows(), want):
    resid = rng.normal(0, P.DEVICE_RESIDUAL_CV, n)
    got = _mc_labels(row, row.device, resid, rng).mean()
    assert abs(got - p) < 4 * np.sqrt(p * (1 - p) / n) + 0.005, (row.roi_id, got, p)


def test_patient_posterior_shares_the_residual(labeled_rows):
  counts = labeled_rows.groupby('patient_id').size()
  vert, pat = oracle.oracle_scores(labeled_rows)
  # a patient with several vertebrae and an uncertain outcome
  cand = [p for p in counts[counts >= 3].index if 0.2 < pat[p] < 0.8]
  pid = cand[0] if cand else counts.idxmax()
  rows = labeled_rows[labeled_rows.patient_id == pid]
  _, want = oracle.oracle_scores(rows)
  rng = np.random.default_rng(1)
  n = 3000
  resid = rng.normal(0, P.DEVICE_RESIDUAL_CV, n)        # one residual per patient draw
  any_pos = np.zeros(n, bool)
  for _, row in rows.iterrows():
    any_pos |= _mc_labels(row, row.device, resid, rng)
  p = want[pid]
  assert abs(any_pos.mean() - p) < 4 * np.sqrt(p * (1 - p) / n) + 0.005
  # Sharing the residual matters: independence would give a different (larger) number.
  v, _ = oracle.oracle_scores(rows)
  assert 1 - np.prod(1 - v) >= p - 1e-9


def test_oracle_beats_ct_density_alone(labeled_rows):
  vert, _ = oracle.oracle_scores(labeled_rows)
  y = labeled_rows.label.astype(int).to_numpy()
  auc_oracle = metrics.auc(y, vert)
  auc_hu = metrics.auc(y, -labeled_rows.hu_true.to_numpy())
  assert auc_oracle > auc_hu
  assert 0.85 < auc_oracle < 1.0


def test_ct_only_oracle_between_ct_density_and_the_full_oracle(labeled_rows):
  """Integrating out age, sex and the cortical part costs AUC but keeps calibration."""
  rows = labeled_rows.reset_index(drop=True)
  ct = oracle.ct_only_scores(rows, 'paper', patients=4000)
  full, _ = oracle.oracle_scores(rows)
  y = rows.label.astype(int).to_numpy()
  assert metrics.auc(y, ct) <= metrics.auc(y, full) + 0.005
  assert metrics.auc(y, ct) > metrics.auc(y, -rows.hu_true.to_numpy())
  for site in ('A', 'B'):                       # calibrated: mean posterior ~ prevalence
    m = (rows.site == site).to_numpy()
    assert abs(ct[m].mean() - y[m].mean()) < 0.05, site
  # the same visible truth gives the same posterior whatever the invisible age
  older = rows.assign(age=rows.age + 10)
  np.testing.assert_allclose(oracle.ct_only_scores(older.iloc[:50], 'paper', patients=4000),
                             ct[:50])


def test_density_reader_oracle_sees_only_the_mixed_hu(labeled_rows):
  """Below the CT-only oracle (fat and bone fraction mixed into one HU), above HU alone
  (size and level are added), and blind to how the HU splits into bone and fat."""
  rows = labeled_rows.reset_index(drop=True)
  hu = oracle.hu_reader_scores(rows, 'paper', patients=4000)
  ct = oracle.ct_only_scores(rows, 'paper', patients=4000)
  y = rows.label.astype(int).to_numpy()
  assert metrics.auc(y, hu) < metrics.auc(y, ct)
  assert metrics.auc(y, hu) > metrics.auc(y, -rows.hu_true.to_numpy())
  # the same trabecular HU made of other bone and fat gives the same posterior
  pdff = np.clip(rows.pdff + 15.0, 0.0, 100.0)
  bvtv = cohort.bvtv_from_hu(rows.hu_true.to_numpy(), pdff.to_numpy())
  other = rows.assign(pdff=pdff, bvtv=bvtv, vbmd=bvtv * P.BONE_TISSUE_MG)
  np.testing.assert_allclose(oracle.hu_reader_scores(other.iloc[:50], 'paper', patients=4000),
                             hu[:50])
  assert not np.allclose(oracle.ct_only_scores(other.iloc[:50], 'paper', patients=4000),
                         ct[:50])


def test_womens_rows_skip_only_zero_weight_nodes(labeled_rows):
  """An all-women chunk is integrated over the nodes with weight (no facet sclerosis in
  women); the same rows inside a mixed chunk, over every node, give the same posteriors."""
  women = labeled_rows[labeled_rows.sex == 'F'].iloc[:20]
  men = labeled_rows[labeled_rows.sex == 'M'].iloc[:5]
  alone = oracle.conditional_probabilities(women)
  mixed = oracle.conditional_probabilities(
      pd.concat([men, women]).iloc[::-1])       # one chunk, both sexes
  np.testing.assert_allclose(mixed[::-1][5:], alone, rtol=1e-12, atol=1e-15)
  assert 0 < alone.mean() < 1
