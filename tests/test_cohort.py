"""OsteoSim cohort statistics against the published numbers of DATA_FACTS.md.

Reference values are written out here from DATA_FACTS.md (not imported from params.py), so a
change of a generator parameter that moves a statistic away from its source fails here.
"""
import numpy as np
import pandas as pd
import pytest

from osteojax.data import cohort
from osteojax.data import params as P

# DATA_FACTS.md numbers used below.
TABLE1 = {'A': ((1330, 226, 669), (2980, 510, 1490), 18308),
          'B': ((683, 112, 325), (1220, 200, 610), 9232),
          'C': ((217, 36, 106), (801, 129, 398), 2716),
          'D': ((0, 0, 193), (0, 0, 271), 0)}
GENANT_LUNAR = (1.074, 0.054)            # Lunar = 1.074 Hologic + 0.054 (§2)
HUI_RESIDUAL = 0.035                     # per-patient error between makers (§2)
HOLOGIC_YOUNG_WOMEN = (1.047, 0.110)     # §2
LEVEL_RATIOS = {'L1': 0.960, 'L2': 1.064, 'L3': 1.100, 'L4': 1.086}   # §2 women
JANG_SLOPE = -2.5                        # HU / yr (§3)
HENDRICKSON_L1_YOUNG_WOMEN = (236, 42)   # §3
NHANES_SPINE = {'F': 0.116, 'M': 0.036}  # >= 50 y, spine alone (§3)
PDFF_20S = {'M': 32.0, 'F': 27.2}        # §5
L6_RATE = 100 / 1446                     # §5


@pytest.fixture(scope='module')
def table():
  return cohort.sample_cohort(0.25, seed=0)


@pytest.fixture(scope='module')
def labeled(table):
  lab = table[table.split != 'pretrain']
  assert len(lab) >= 2000
  return lab


def _young(female, n=3000, seed=1, age=(20, 30)):
  """L1-L4 rows of n patients drawn at a fixed age range and sex."""
  rng = np.random.default_rng(seed)
  ages = rng.uniform(*age, n)
  fem = np.full(n, female)
  subj = cohort.draw_subjects(rng, ages, fem)
  rows = []
  for i in range(n):
    for r in cohort.vertebra_rows(rng, subj, i, ages[i], fem[i], list(P.LABELED_LEVELS), True):
      r['patient'] = i
      rows.append(r)
  return pd.DataFrame(rows), subj


def test_deterministic_and_seeded():
  a = cohort.sample_cohort(0.01, seed=3)
  b = cohort.sample_cohort(0.01, seed=3)
  c = cohort.sample_cohort(0.01, seed=4)
  pd.testing.assert_frame_equal(a, b)
  assert not np.allclose(a.vbmd.to_numpy()[:50], c.vbmd.to_numpy()[:50])


def test_labeled_scale_sizes_the_labeled_splits_only():
  a = cohort.sample_cohort(0.01, seed=3)
  pd.testing.assert_frame_equal(a, cohort.sample_cohort(0.01, seed=3, labeled_scale=0.01))
  b = cohort.sample_cohort(0.01, seed=3, labeled_scale=0.04)
  assert (b.split == 'pretrain').sum() == (a.split == 'pretrain').sum()
  for split in ('train', 'valid', 'test'):
    na, nb = (a.split == split).sum(), (b.split == split).sum()
    assert 3 * na <= nb <= 5 * na, (split, na, nb)     # about 4x, rounding per site


def test_counts_follow_table1(table):
  for site, (pats, verts, unl) in TABLE1.items():
    d = table[table.site == site]
    for j, split in enumerate(('train', 'valid', 'test')):
      s = d[d.split == split]
      assert s.patient_id.nunique() == round(0.25 * pats[j])
      assert len(s) == round(0.25 * verts[j])
    assert (d.split == 'pretrain').sum() == round(0.25 * unl)


def test_levels(table, labeled):
  assert set(labeled.level) <= set(P.LABELED_LEVELS)
  per_patient = labeled.groupby('patient_id').size()
  assert per_patient.min() >= 1 and per_patient.max() <= 4
  pre = table[table.split == 'pretrain']
  assert set(pre.level) >= set(P.LEVELS[:17])          # T1..L5 all present
  l6 = pre.groupby('patient_id')['level'].apply(lambda s: 'L6' in set(s))
  abdominal = pre.groupby('patient_id')['level'].apply(lambda s: 'L5' in set(s) or 'L6' in set(s))
  rate = l6[abdominal].mean()
  assert abs(rate - L6_RATE) < 0.04, rate
  assert (table.level_index == table.level.map(P.LEVEL_INDEX)).all()


def test_hu_age_trend(table):
  l1 = table[table.level == 'L1']
  slope = np.polyfit(l1.age, l1.hu_true, 1)[0]
  assert abs(slope - JANG_SLOPE) < 0.6, slope


def test_young_women_hu_and_hologic_reference():
  rows, _ = _young(True)
  l1 = rows[rows.level == 'L1']
  assert abs(l1.hu_true.mean() - HENDRICKSON_L1_YOUNG_WOMEN[0]) < 8
  assert 34 < l1.hu_true.std() < 50
  spine = rows.groupby('patient').bmd_hologic.mean()     # L1-L4 reading per patient
  assert abs(spine.mean() - HOLOGIC_YOUNG_WOMEN[0]) < 0.02
  assert abs(spine.std() - HOLOGIC_YOUNG_WOMEN[1]) < 0.015
  for d in P.DEVICE_NAMES:            # each maker's own reference: young women T ~ N(0, 1)
    assert abs(rows[f't_{d}'].mean()) < 0.15, d
    assert 0.85 < rows[f't_{d}'].std() < 1.2, d
  level_means = rows.groupby('level').bmd_hologic.mean()
  assert level_means.idxmin() == 'L1'
  for lev, ratio in LEVEL_RATIOS.items():
    assert abs(level_means[lev] / level_means['L1'] - ratio / LEVEL_RATIOS['L1']) < 0.03


def test_marrow_fat_in_twenties():
  for female, sex in ((True, 'F'), (False, 'M')):
    _, subj = _young(female, n=2000, age=(20, 29.9))
    assert abs(subj['pdff'].mean() - PDFF_20S[sex]) < 2.0


def test_prevalence_over_50_near_nhanes():
  rng = np.random.default_rng(7)
  age, female = cohort._draw_patients(rng, 6000)
  keep = np.where(age >= 50)[0]
  subj = cohort.draw_subjects(rng, age, female)
  hits = {'F': [], 'M': []}
  for i in keep:
    rows = cohort.vertebra_rows(rng, subj, i, age[i], female[i], list(P.LABELED_LEVELS), True)
    sex = 'F' if female[i] else 'M'
    mean, sd = P.DEVICES['hologic']['ref'][sex]
    spine = np.mean([r['bmd_hologic'] for r in rows])
    hits[sex].append((spine - mean) / sd <= -2.5)
  assert abs(np.mean(hits['F']) - NHANES_SPINE['F']) < 0.04, np.mean(hits['F'])
  assert abs(np.mean(hits['M']) - NHANES_SPINE['M']) < 0.025, np.mean(hits['M'])


def test_cross_calibration_genant_and_hui(labeled):
  h, l = labeled.bmd_hologic.to_numpy(), labeled.bmd_ge_lunar.to_numpy()
  slope, icpt = np.polyfit(h, l, 1)
  # Regression dilution from the per-maker noise flattens the slope a little.
  assert abs(slope - GENANT_LUNAR[0]) < 0.08, slope
  assert abs(np.median(l - (GENANT_LUNAR[0] * h + GENANT_LUNAR[1]))) < 0.01
  rel = (l / (GENANT_LUNAR[0] * h + GENANT_LUNAR[1])) - 1
  assert 0.025 < rel.std() < 0.05, rel.std()     # Hui: ~3.5% + precision


def test_device_disagreement_as_calibration_implies(labeled):
  """Re-draw readings from the true aBMD with DATA_FACTS' numbers alone; compare discordance."""
  rng = np.random.default_rng(11)
  refs = {'hologic': {'F': (1.047, 0.110), 'M': (1.06, 0.11)},
          'ge_lunar': {'F': (1.19, 0.12), 'M': (1.20, 0.12)}}
  cal = {'hologic': (1.0, 0.0), 'ge_lunar': GENANT_LUNAR}
  cv = {'hologic': 0.0108, 'ge_lunar': 0.0122}
  ratio = labeled.level.map(LEVEL_RATIOS) / np.mean(list(LEVEL_RATIOS.values()))
  a = (labeled.abmd_true * (1 + labeled.degeneration)).to_numpy()
  rates = []
  for _ in range(20):
    lab = {}
    for d in ('hologic', 'ge_lunar'):
      read = ((cal[d][0] * a + cal[d][1]) * (1 + rng.normal(0, HUI_RESIDUAL / 2 ** .5, len(a)))
              * (1 + rng.normal(0, cv[d], len(a))))
      mean = np.array([refs[d][s][0] for s in labeled.sex]) * ratio
      sd = np.array([refs[d][s][1] for s in labeled.sex]) * ratio
      lab[d] = (read - mean) / sd <= -2.5
    rates.append(np.mean(lab['hologic'] != lab['ge_lunar']))
  observed = np.mean(labeled.label_hologic != labeled.label_ge_lunar)
  assert abs(observed - np.mean(rates)) < 0.015, (observed, np.mean(rates))
  assert observed > 0.01      # makers do disagree


def test_site_label_is_site_device(labeled):
  for d in P.DEVICE_NAMES:
    rows = labeled[labeled.device == d]
    assert (rows.label == rows[f'label_{d}']).all()
    assert np.allclose(rows.t_score, rows[f't_{d}'])
  assert ((labeled.t_score <= -2.5) == (labeled.label == 1)).all()


def test_degeneration_only_in_dxa_and_rises_with_age(labeled):
  old = labeled[labeled.age >= 70]
  young = labeled[labeled.age < 55]
  assert (old.degeneration > 0).mean() > (young.degeneration > 0).mean()
  l4, l1 = labeled[labeled.level == 'L4'], labeled[labeled.level == 'L1']
  assert (l4.degeneration > 0).mean() > (l1.degeneration > 0).mean()
  # CT truth ignores it: HU follows bvtv and marrow fat alone.
  np.testing.assert_allclose(labeled.hu_true, cohort.hu_from_bvtv(labeled.bvtv, labeled.pdff))


# DATA_FACTS.md §9: vertebra-level prevalence implied by the paper's Table 2 (median of rows).
PAPER_PREVALENCE = {'A': 0.39, 'B': 0.16, 'C': 0.13, 'D': 0.35}


def test_paper_cohort_reaches_the_paper_prevalence_per_site():
  for site, want in PAPER_PREVALENCE.items():
    n = sum(P.SITES[site]['patients'])
    t = cohort.sample_cohort(1e-6, 5, labeled_scale=6000 / n, cohort='paper', sites=[site])
    lab = t[t.split != 'pretrain']
    assert abs(lab.label.astype(int).mean() - want) < 0.025, (site, lab.label.mean())
    pop = cohort.sample_cohort(1e-6, 5, labeled_scale=6000 / n, cohort='population',
                               sites=[site])
    pop = pop[pop.split != 'pretrain']
    assert 0.05 < pop.label.astype(int).mean() < 0.12           # NHANES-like adults
    # referral moves density only: ages are the population's
    assert abs(lab.age.mean() - pop.age.mean()) < 1.0


def test_splits_are_stratified_and_keep_table1_counts():
  t = cohort.sample_cohort(0.05, 0, labeled_scale=0.2)
  lab = t[t.split != 'pretrain']
  for site in ('A', 'B', 'C'):
    d = lab[lab.site == site]
    pos = d.groupby(['split', 'patient_id']).label.max().astype(int).groupby('split').mean()
    assert pos.max() - pos.min() < 0.1, (site, pos.to_dict())
    for j, split in enumerate(P.SPLITS):
      s = d[d.split == split]
      assert s.patient_id.nunique() == round(0.2 * P.SITES[site]['patients'][j])
      assert len(s) == round(0.2 * P.SITES[site]['vertebrae'][j])
  # patients do not straddle splits, and a split's patients are not ordered by label
  assert (lab.groupby('patient_id').split.nunique() == 1).all()
  a_train = lab[(lab.site == 'A') & (lab.split == 'train')].groupby('patient_id', sort=False)
  first = a_train.label.max().astype(int).to_numpy()
  assert 0 < first[:40].mean() < 1


def test_unknown_cohort_is_an_error():
  with pytest.raises(ValueError, match='unknown cohort'):
    cohort.sample_cohort(0.01, 0, cohort='nhanes')
