"""Calibrate the 'paper' cohort: the referral shift per site that gives the paper's prevalence.

  python tools/calibrate_cohort.py               # the table and the params.py literal
  python tools/calibrate_cohort.py --explain     # why the age/sex mix alone cannot do it

For each site, the referral shift k (params.REFERRAL_SHIFT_SD: the L1 HU residual of a referred
patient is N(-k, 1) * HU_L1_SD) is found by bisection so that the site's labeled vertebrae reach
the vertebra-level prevalence that the paper's Table 2 implies (params.PAPER_PREVALENCE,
DATA_FACTS.md §9) on the site's own DXA device. The draws are the generator's own
(cohort.sample_cohort, truth only, no images) with --patients patients per site and common
random numbers (one seed for every k), so the prevalence is monotone in k. Prints a Markdown
table and the dictionary to record in params.py; --check exits 1 when params.py differs from a
fresh calibration by more than --tol.
"""
import argparse
import json
import sys

import numpy as np
from scipy import optimize

from osteojax.data import cohort
from osteojax.data import params as P


def site_prevalence(site: str, k: float, patients: int, seed: int) -> tuple:
  """(vertebra prevalence, patient prevalence, n vertebrae) of `site`'s labeled rows at shift k."""
  n_site = sum(P.SITES[site]['patients'])
  saved = P.REFERRAL_SHIFT_SD['paper'][site]
  P.REFERRAL_SHIFT_SD['paper'][site] = k
  try:
    t = cohort.sample_cohort(1e-6, seed, labeled_scale=patients / n_site, cohort='paper',
                             sites=[site])
  finally:
    P.REFERRAL_SHIFT_SD['paper'][site] = saved
  lab = t[t.split != 'pretrain']
  y = lab.label.astype(int)
  return float(y.mean()), float(y.groupby(lab.patient_id).max().mean()), len(lab)


def calibrate(patients: int, seed: int, xtol: float = 1e-3) -> dict:
  out = {}
  for site, target in P.PAPER_PREVALENCE.items():
    k = optimize.brentq(lambda x: site_prevalence(site, x, patients, seed)[0] - target,
                        -1.0, 4.0, xtol=xtol)
    vert, pat, n = site_prevalence(site, k, patients, seed)
    pop, pop_pat, _ = site_prevalence(site, 0.0, patients, seed)
    out[site] = dict(device=P.SITES[site]['device'], target=target, k=round(k, 3),
                     vertebra_prevalence=vert, patient_prevalence=pat, vertebrae=n,
                     population_prevalence=pop, population_patient_prevalence=pop_pat)
  return out


def explain(patients: int, seed: int) -> str:
  """Hologic vertebra prevalence when the age/sex mix is pushed to its limit (no shift)."""
  rng = np.random.default_rng(seed)
  lines = ['| women | age mean (SD 12, 30-90) | Hologic vertebra prevalence |', '|---|---|---|']
  for fem_frac in (0.5, 1.0):
    for age_mean in (62.0, 70.0, 80.0):
      age = rng.normal(age_mean, P.AGE_SD, patients)
      bad = (age <= P.AGE_MIN) | (age >= P.AGE_MAX)
      while bad.any():
        age[bad] = rng.normal(age_mean, P.AGE_SD, bad.sum())
        bad = (age <= P.AGE_MIN) | (age >= P.AGE_MAX)
      female = rng.random(patients) < fem_frac
      subj = cohort.draw_subjects(rng, age, female)
      y = [r['label_hologic'] for i in range(patients)
           for r in cohort.vertebra_rows(rng, subj, i, age[i], female[i],
                                         list(P.LABELED_LEVELS), True)]
      lines.append(f'| {fem_frac:.0%} | {age_mean:.0f} | {np.mean(y):.1%} |')
  return '\n'.join(lines)


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--patients', type=int, default=40000, help='patients drawn per site')
  ap.add_argument('--seed', type=int, default=0)
  ap.add_argument('--explain', action='store_true')
  ap.add_argument('--check', action='store_true')
  ap.add_argument('--tol', type=float, default=0.02)
  a = ap.parse_args()
  if a.explain:
    print(explain(min(a.patients, 10000), a.seed))
    return 0
  res = calibrate(a.patients, a.seed)
  print('| site | device | target (§9) | referral shift k | vertebra prevalence | patient '
        'prevalence | population cohort (vertebra / patient) |')
  print('|---|---|---|---|---|---|---|')
  for site, r in res.items():
    print(f'| {site} | {r["device"]} | {r["target"]:.2f} | {r["k"]:.3f} | '
          f'{r["vertebra_prevalence"]:.3f} | {r["patient_prevalence"]:.3f} | '
          f'{r["population_prevalence"]:.3f} / {r["population_patient_prevalence"]:.3f} |')
  shifts = {s: r['k'] for s, r in res.items()}
  print(f"\nparams.REFERRAL_SHIFT_SD['paper'] = {json.dumps(shifts)}")
  if a.check:
    now = P.REFERRAL_SHIFT_SD['paper']
    off = {s: (now[s], k) for s, k in shifts.items() if abs(now[s] - k) > a.tol}
    if off:
      print(f'params.py differs from this calibration: {off}', file=sys.stderr)
      return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
