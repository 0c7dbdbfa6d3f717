"""The oracle: the best diagnosis any CT model could make on OsteoSim.

A CT shows the vertebra's anatomy: its true areal BMD follows from vBMD, size and the cortical
part (`abmd_true`), and the patient's age, sex and level are known. What no CT can show is the
DXA side of the label: the degenerative / facet elevation (a random event whose probability
rises with age), the maker's per-patient residual, and the reading's precision noise. The
oracle's score is the exact Bayes posterior P(label = 1 | abmd_true, age, sex, level, device)
under the generator's own noise model, so its AUC and F1 are the ceiling for every model.

Patient level: a patient is positive if any of their vertebrae is; the maker residual is shared
by a patient's vertebrae, so P(any) is integrated over it (Gauss-Hermite), not multiplied.
"""
from __future__ import annotations

import functools

import numpy as np
import pandas as pd
from scipy import special

from osteojax.data import cohort
from osteojax.data import params as P

_N_R = 32          # Gauss-Hermite nodes over the maker residual
_N_U = 16          # midpoint nodes over each uniform elevation


def _residual_nodes():
  x, w = np.polynomial.hermite_e.hermegauss(_N_R)   # weight exp(-x^2/2)
  return x * P.DEVICE_RESIDUAL_CV, w / w.sum()


def _uniform_nodes(lo, hi):
  return lo + (hi - lo) * (np.arange(_N_U) + 0.5) / _N_U


def _elevations(abmd, age, level, female):
  """Relative aBMD elevations [N, K] and their probabilities [N, K] (rows sum to 1)."""
  n = len(abmd)
  p_deg = np.array([cohort.degeneration_prevalence(a, l) for a, l in zip(age, level)])
  p_fac = np.where(female, 0.0, cohort.facet_prevalence(age))
  deg = _uniform_nodes(*P.DEGENERATION_ELEVATION)                     # [U]
  fac = _uniform_nodes(*P.FACET_SCLEROSIS_MEN['elevation_gcm2'])      # [U] g/cm2
  fac_rel = fac[None, :] / abmd[:, None]                              # [N, U]
  u = 1.0 / _N_U
  parts = [
      (np.zeros((n, 1)), ((1 - p_deg) * (1 - p_fac))[:, None]),
      (np.broadcast_to(deg, (n, _N_U)), (p_deg * (1 - p_fac))[:, None] * u),
      (fac_rel, ((1 - p_deg) * p_fac)[:, None] * u),
      ((deg[None, :, None] + fac_rel[:, None, :]).reshape(n, -1),
       (p_deg * p_fac)[:, None] * u * u * np.ones((1, _N_U * _N_U))),
  ]
  return (np.concatenate([p[0] for p in parts], 1),
          np.concatenate([np.broadcast_to(p[1], p[0].shape) for p in parts], 1))


def conditional_probabilities(df: pd.DataFrame, device_col: str = 'device') -> np.ndarray:
  """P(label = 1 | truth, residual r) for each row and residual node: [N, R] float64.

  df: labeled rows with abmd_true, age, sex, level and the device in `device_col`.
  """
  r, _ = _residual_nodes()
  out = np.zeros((len(df), len(r)))
  female = (df.sex == 'F').to_numpy()
  # Women's facet-sclerosis nodes have weight 0 (_elevations' columns past 1 + _N_U): their
  # rows are integrated over the first 1 + _N_U nodes alone, the same sum at a tenth the cost.
  order = np.concatenate([np.flatnonzero(female), np.flatnonzero(~female)])
  for start in range(0, len(df), 512):
    rows = order[start:start + 512]
    d = df.iloc[rows]
    abmd = d.abmd_true.to_numpy(float)
    is_f = d.sex.to_numpy() == 'F'
    delta, w = _elevations(abmd, d.age.to_numpy(float), d.level.to_numpy(), is_f)
    if is_f.all():
      delta, w = delta[:, :1 + _N_U], w[:, :1 + _N_U]
    dev = d[device_col].to_numpy()
    slope = np.array([P.DEVICES[x]['slope'] for x in dev])
    icpt = np.array([P.DEVICES[x]['intercept'] for x in dev])
    cv = np.array([P.DEVICES[x]['precision_cv'] for x in dev])
    ref = [cohort.device_reference(x, s, l) for x, s, l in zip(dev, d.sex, d.level)]
    thr = np.array([m + P.OSTEOPOROSIS_T * s for m, s in ref])
    mean = slope[:, None] * abmd[:, None] * (1 + delta) + icpt[:, None]        # [n, K]
    z = (thr[:, None, None] / (mean[:, :, None] * (1 + r[None, None, :])) - 1) / cv[:, None, None]
    out[rows] = np.einsum('nk,nkr->nr', w, special.ndtr(z))
  return out


def oracle_scores(df: pd.DataFrame, device_col: str = 'device'):
  """Vertebra posteriors [N] and patient posteriors (Series indexed by patient_id)."""
  cond = conditional_probabilities(df, device_col)
  _, wr = _residual_nodes()
  vert = cond @ wr
  log_neg = pd.DataFrame(np.log1p(-np.clip(cond, 0, 1 - 1e-12)))
  log_neg['patient_id'] = df.patient_id.to_numpy()
  per_patient = log_neg.groupby('patient_id', sort=True).sum()
  patient = pd.Series(1 - np.exp(per_patient.to_numpy()) @ wr, index=per_patient.index)
  return vert, patient


# ----------------------------------------------------------------------------------------------
# The CT-only oracle: the posterior given what the model sees.

CT_VISIBLE = ('vbmd', 'pdff', 'size_factor', 'level_index')
# What an exact reader of trabecular density sees: the mean trabecular HU on the reference
# scanner (bone fraction and marrow fat mixed into one number, no noise, no scanner offset),
# the body's size and level. Its posterior is the ceiling for a model that reads density.
HU_VISIBLE = ('hu_true', 'size_factor', 'level_index')
CT_ONLY_REFERENCE_PATIENTS = 20000    # generator patients per site behind the estimate
CT_ONLY_SEED = 9173                   # their seed (a reference cohort, not the data set's)


@functools.lru_cache(maxsize=8)
def _reference(cohort_name: str, site: str, patients: int, seed: int):
  """The reference patients of one site and the full oracle's posterior on them (shared by
  the CT-only and density-reader estimates; deterministic, so cached)."""
  n_site = sum(P.SITES[site]['patients'])
  ref = cohort.sample_cohort(1e-6, seed, labeled_scale=patients / n_site,
                             cohort=cohort_name, sites=[site])
  ref = ref[ref.split != 'pretrain'].reset_index(drop=True)
  target, _ = oracle_scores(ref)
  return ref, target


@functools.lru_cache(maxsize=16)
def _ct_only_regressor(cohort_name: str, site: str, patients: int, seed: int,
                       visible: tuple = CT_VISIBLE):
  """The fitted regressor of ct_only_scores for one site and set of visible columns
  (deterministic, so cached)."""
  from sklearn.ensemble import HistGradientBoostingRegressor
  ref, target = _reference(cohort_name, site, patients, seed)
  reg = HistGradientBoostingRegressor(max_iter=300, learning_rate=0.1, random_state=0)
  with _one_openmp_thread():
    return reg.fit(ref[list(visible)].to_numpy(float), target)


def _one_openmp_thread():
  """The boosted trees on one OpenMP thread. The pipeline fits them in a background thread while
  the model trains; there OpenMP's spinning workers and XLA's fought over the cores and one site's
  fit (11k reference rows, 2 cores) took 28 s instead of 2 s on one thread."""
  from threadpoolctl import threadpool_limits
  return threadpool_limits(1, user_api='openmp')


def ct_only_scores(df: pd.DataFrame, cohort_name: str = 'paper',
                   patients: int = CT_ONLY_REFERENCE_PATIENTS, seed: int = CT_ONLY_SEED,
                   visible: tuple = CT_VISIBLE):
  """Vertebra posteriors [N] P(label = 1 | CT-visible truth, device, site) for labeled rows df.

  A model sees the rendered CT and the DXA device, not the patient's age or sex: the phantom
  renders the trabecular bone fraction (vbmd), marrow fat (pdff) and the body's size and level
  (CT_VISIBLE), but not the cortical/posterior part of the areal BMD (base_factor), and the
  label's DXA-side noise depends on age and sex. This oracle integrates what is not visible
  under the generator's own prior: E[P(label | abmd_true, age, sex, level, device) | visible],
  the full oracle's posterior averaged over the invisible quantities. The expectation is
  estimated by regression: a gradient-boosted regressor, one per site (each site has its own
  prior: referral shift, device), fit on `patients` reference patients per site drawn from the
  generator (cohort.sample_cohort, same cohort, another seed), regressing the full oracle's
  posterior on CT_VISIBLE. It is an estimate, not exact like oracle_scores.
  visible=HU_VISIBLE gives the density-reader oracle instead (hu_reader_scores).
  """
  visible = tuple(visible)
  out = np.full(len(df), np.nan)
  for site in sorted(df.site.unique()):
    reg = _ct_only_regressor(cohort_name, site, int(patients), int(seed), visible)
    m = (df.site == site).to_numpy()
    with _one_openmp_thread():
      out[m] = np.clip(reg.predict(df.loc[m, list(visible)].to_numpy(float)), 0.0, 1.0)
  return out


def hu_reader_scores(df: pd.DataFrame, cohort_name: str = 'paper',
                     patients: int = CT_ONLY_REFERENCE_PATIENTS, seed: int = CT_ONLY_SEED):
  """Vertebra posteriors [N] P(label = 1 | exact mean trabecular HU, size, level, device).

  The phantom renders bone fraction and marrow fat into one trabecular HU
  (cohort.hu_from_bvtv); a reader of density alone cannot tell a sparse lattice in red marrow
  from a denser one in fatty marrow. This is the CT-only oracle (same estimate, same reference
  patients) with that one number in place of the two: the ceiling of a perfect,
  noise-free, offset-free trabecular HU reader, between the HU rule and the CT-only oracle.
  """
  return ct_only_scores(df, cohort_name, patients, seed, visible=HU_VISIBLE)
