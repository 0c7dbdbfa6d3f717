"""OsteoSim cohort: patients, vertebrae and their latent truth, without images.

The cohort is a table (one row per vertebra ROI) drawn from the parameters in `params.py`:
  age, sex -> L1 trabecular HU (Jang/Hendrickson curves) and marrow fat -> vBMD per level
  -> true areal BMD (size, level) -> + degenerative elevation -> each maker's DXA reading
  (calibration, per-patient residual, precision noise) -> T-scores against each maker's own
  young-adult reference -> label on the site's own device (WHO: T <= -2.5).
Images are rendered later from these rows (`phantom.py`), so the statistics can be checked on
thousands of vertebrae in a second.
"""
from __future__ import annotations

import functools

import numpy as np
import pandas as pd
from scipy import special

from osteojax.data import params as P
from osteojax.errors import ConfigError

# Columns of a manifest row (generated and real data share them; truth columns are NaN for real).
ID_COLUMNS = ['roi_id', 'patient_id', 'site', 'split', 'device', 'scanner', 'level',
              'level_index', 'age', 'sex']
TRUTH_COLUMNS = ['size_factor', 'base_factor', 'pdff', 'hu_true', 'vbmd', 'bvtv', 'abmd_true', 'degeneration']
DXA_COLUMNS = ([f'bmd_{d}' for d in P.DEVICE_NAMES] + [f't_{d}' for d in P.DEVICE_NAMES]
               + [f'label_{d}' for d in P.DEVICE_NAMES])
LABEL_COLUMNS = ['bmd', 't_score', 'label']
MANIFEST_COLUMNS = ID_COLUMNS + TRUTH_COLUMNS + DXA_COLUMNS + LABEL_COLUMNS


def _interp(anchors, x):
  xs, ys = zip(*anchors)
  return np.interp(x, xs, ys)


def hu_l1_mean(age, female):
  """Mean L1 trabecular HU at the reference scanner. age: [N] years, female: [N] bool."""
  return np.where(female, _interp(P.HU_L1_WOMEN, age), _interp(P.HU_L1_MEN, age))


def pdff_mean(age, female):
  """Mean marrow proton-density fat fraction (%) by age and sex."""
  return np.where(female, _interp(P.PDFF_WOMEN, age), _interp(P.PDFF_MEN, age))


def marrow_hu(pdff):
  """HU of marrow with fat fraction pdff (%): a linear mix of fat and red marrow."""
  f = np.asarray(pdff) / 100.0
  return (1 - f) * P.HU_RED_MARROW + f * P.HU_FAT


def bvtv_from_hu(hu, pdff):
  """Bone volume fraction that makes a trabecular voxel read `hu` given its marrow fat."""
  m = marrow_hu(pdff)
  return np.clip((hu - m) / (P.BONE_TISSUE_HU - m), 0.01, 0.6)


def hu_from_bvtv(bvtv, pdff):
  """Inverse of bvtv_from_hu: mean HU of trabecular bone of volume fraction bvtv."""
  m = marrow_hu(pdff)
  return bvtv * P.BONE_TISSUE_HU + (1 - bvtv) * m


def level_size_mm(level):
  """(height, width, depth) in mm of a vertebral body at `level`, Panjabi anchors interpolated."""
  idx = P.LEVEL_INDEX[level]
  anchors = sorted((P.LEVEL_INDEX[k], v) for k, v in P.SIZE_ANCHORS.items())
  xs = [a[0] for a in anchors]
  return tuple(float(np.interp(idx, xs, [a[1][j] for a in anchors])) for j in range(3))


def _young_women_vbmd_l1():
  """Mean L1 vBMD (mg/cm3) of women aged <= 30: the anchor of the aBMD calibration."""
  hu = P.HU_L1_WOMEN[0][1]
  return P.BONE_TISSUE_MG * bvtv_from_hu(hu, P.PDFF_WOMEN[0][1])


@functools.lru_cache(maxsize=None)
def _level_ratio(level):   # cached: called for every vertebra and device (~10^5 per cohort)
  return P.ABMD_LEVEL_RATIO[level] / np.mean(list(P.ABMD_LEVEL_RATIO.values()))


def level_shape(level):
  """Per-level aBMD factor: young women read 1.047 * per-level ratio on Hologic (DERIVED)."""
  v = _young_women_vbmd_l1() * P.LEVEL_VBMD_REL[level]
  return P.ABMD_YOUNG_WOMEN * _level_ratio(level) / (P.ABMD_BASE + P.ABMD_PER_MG * v)


def true_abmd(vbmd, size_factor, base_factor, level):
  """True areal BMD (Hologic scale, g/cm2) of one vertebra at `level` from vBMD (mg/cm3).

  size_factor: the patient's body-size factor; base_factor: 1 + the patient's cortical/posterior
  spread e_base. Scalars or arrays that broadcast; level: a level name.
  """
  return size_factor * level_shape(level) * (P.ABMD_BASE * base_factor
                                             + P.ABMD_PER_MG * np.asarray(vbmd))


def device_reference(device, sex, level):
  """(mean, sd) of the maker's young-adult reference at `level` for sex 'F'/'M' (scalars)."""
  mean, sd = P.DEVICES[device]['ref'][sex]
  r = _level_ratio(level)
  return mean * r, sd * r


def reading_t_score(bmd, devices, levels) -> np.ndarray:
  """The T-score of each reading (g/cm2 of its device) against that device's young-adult
  reference at its level, the mean of the women's and men's references (a reader that is not
  told the sex; the two differ by ~0.1 reference SD). A level without a DXA reference (outside
  L1-L4) raises ValueError."""
  ref = {}
  for d, l in set(zip(devices, levels)):
    if l not in P.LABELED_LEVELS:
      raise ValueError(f"level {l!r} has no DXA reference (only "
                       f"{', '.join(P.LABELED_LEVELS)}), so no T-score")
    m = [device_reference(d, sex, l) for sex in 'FM']
    ref[d, l] = (np.mean([x[0] for x in m]), np.mean([x[1] for x in m]))
  mean, sd = np.array([ref[d, l] for d, l in zip(devices, levels)], float).reshape(-1, 2).T
  return (np.asarray(bmd, float) - mean) / sd


def degeneration_prevalence(age, level):
  """P(degenerative aBMD elevation) at `level` and age: logistic through the OPRA anchors."""
  p75, p85 = P.DEGENERATION_PREVALENCE[level]
  l75, l85 = special.logit(p75), special.logit(p85)
  slope = (l85 - l75) / 10.0
  return special.expit(l75 + slope * (np.asarray(age) - 75.0))


def facet_prevalence(age):
  """P(facet sclerosis) of a man's vertebra at `age`: logistic through the anchors (FREE)."""
  (a0, p0), (a1, p1) = P.FACET_SCLEROSIS_MEN['prevalence']
  l0, l1 = special.logit(p0), special.logit(p1)
  return special.expit(l0 + (l1 - l0) / (a1 - a0) * (np.asarray(age) - a0))


def calibrate(device, abmd):
  """Maker calibration (Genant 1994 equations): true Hologic-scale aBMD -> maker reading."""
  d = P.DEVICES[device]
  return d['slope'] * abmd + d['intercept']


def t_score(device, bmd, sex, level):
  """T-score of a maker's reading against the maker's own young-adult reference."""
  mean, sd = device_reference(device, sex, level)
  return (bmd - mean) / sd


def _counts(n, scale):
  if n == 0 or scale <= 0:
    return 0
  return max(1, int(round(n * scale)))


def _draw_patients(rng, n):
  age = np.clip(rng.normal(P.AGE_MEAN, P.AGE_SD, n), P.AGE_MIN, P.AGE_MAX)
  # Redraw ages outside the range instead of piling them up at the bounds.
  bad = (age <= P.AGE_MIN) | (age >= P.AGE_MAX)
  while bad.any():
    age[bad] = rng.normal(P.AGE_MEAN, P.AGE_SD, bad.sum())
    bad = (age <= P.AGE_MIN) | (age >= P.AGE_MAX)
  female = rng.random(n) < P.FEMALE_FRACTION
  return age, female


def draw_subjects(rng, age, female, hu_shift_sd: float = 0.0):
  """Per-patient latents for arrays age [N] and female [N]: HU_L1, PDFF, size, DXA residuals.

  hu_shift_sd: referral selection (params.REFERRAL_SHIFT_SD): the L1 HU residual is drawn from
  N(-hu_shift_sd, 1) * HU_L1_SD instead of N(0, 1) * HU_L1_SD.
  """
  n = len(age)
  hu = hu_l1_mean(age, female) + P.HU_L1_SD * (rng.normal(0, 1, n) - hu_shift_sd)
  pdff = np.clip(pdff_mean(age, female) + rng.normal(0, P.PDFF_SD, n), 10, 80)
  size = np.where(female, 1.0, P.MALE_SIZE_FACTOR) * np.exp(rng.normal(0, P.SIZE_SD, n))
  base = 1 + rng.normal(0, P.ABMD_BASE_CV, n)
  resid = {d: rng.normal(0, P.DEVICE_RESIDUAL_CV, n) for d in P.DEVICE_NAMES}
  return dict(hu_l1=hu, pdff=pdff, size=size, base=base, resid=resid)


def draw_elevation(rng, age, level, female, abmd):
  """Relative DXA-only elevation of one vertebra: degeneration (both sexes) + facets (men)."""
  degen = 0.0
  if rng.random() < degeneration_prevalence(age, level):
    degen = float(rng.uniform(*P.DEGENERATION_ELEVATION))
  if not female and rng.random() < facet_prevalence(age):
    degen += float(rng.uniform(*P.FACET_SCLEROSIS_MEN['elevation_gcm2'])) / abmd
  return degen


def read_dxa(rng, device, abmd, elevation, residual):
  """One maker's reading (g/cm2): calibration of the elevated aBMD, the patient's residual for
  this maker, and the maker's precision noise."""
  cv = P.DEVICES[device]['precision_cv']
  return (calibrate(device, abmd * (1 + elevation)) * (1 + residual)
          * (1 + rng.normal(0, cv)))


def vertebra_rows(rng, subj, i, age, female, levels, labeled):
  """Rows (dicts of truth) for patient i's vertebrae at `levels`."""
  sex = 'F' if female else 'M'
  rows = []
  bvtv_l1 = bvtv_from_hu(subj['hu_l1'][i], subj['pdff'][i])
  for lev in levels:
    rel = P.LEVEL_VBMD_REL[lev] * np.exp(rng.normal(0, P.HU_LEVEL_SD))
    bvtv = float(np.clip(bvtv_l1 * rel, 0.01, 0.6))
    row = dict(level=lev, level_index=P.LEVEL_INDEX[lev], age=float(age), sex=sex,
               size_factor=float(subj['size'][i]), base_factor=float(subj['base'][i]),
               pdff=float(subj['pdff'][i]),
               bvtv=bvtv, vbmd=bvtv * P.BONE_TISSUE_MG,
               hu_true=float(hu_from_bvtv(bvtv, subj['pdff'][i])))
    if labeled:
      abmd = float(true_abmd(row['vbmd'], row['size_factor'], row['base_factor'], lev))
      degen = draw_elevation(rng, age, lev, female, abmd)
      row.update(abmd_true=abmd, degeneration=degen)
      for d in P.DEVICE_NAMES:
        bmd = read_dxa(rng, d, abmd, degen, subj['resid'][d][i])
        t = t_score(d, bmd, sex, lev)
        row.update({f'bmd_{d}': bmd, f't_{d}': t, f'label_{d}': int(t <= P.OSTEOPOROSIS_T)})
    rows.append(row)
  return rows


def _labeled_levels(rng, n_patients, n_vertebrae):
  """Split n_vertebrae over patients: each gets >= 1 and <= 4 of L1-L4 (drop-outs at random)."""
  k = np.ones(n_patients, int)
  extra = n_vertebrae - n_patients
  slots = rng.choice(n_patients * 3, size=extra, replace=False) // 3
  np.add.at(k, slots, 1)
  return [sorted(rng.choice(4, size=kk, replace=False)) for kk in k]


def _scan_levels(rng, has_l6):
  kind = 'chest' if rng.random() < 0.5 else 'abdomen'
  lo, hi = P.SCAN_RANGES[kind]
  if hi == 'L2' and rng.random() < 0.5:
    hi = 'L1'
  if hi == 'L6' and not has_l6:
    hi = 'L5'
  return list(P.LEVELS[P.LEVEL_INDEX[lo]:P.LEVEL_INDEX[hi] + 1])


def stratify_splits(patients, rng):
  """Re-deal patients to the split slots so that every split gets its share of positives.

  patients: [(split, rows)] as drawn. Within each group of patients with the same number of
  vertebrae, the patients (positive ones first, the order within random) are dealt to that
  group's split slots in order of the slots' evenly spaced positions, so each split receives a
  share of the group's positive patients proportional to its size (within one) while the
  patient and vertebra counts of every split (Table 1) stay exactly as drawn. Returns
  [(split, rows)] with the new splits, each split's patients in random order.
  """
  out = []
  sizes = sorted({len(r) for _, r in patients})
  for k in sizes:
    group = [(s, r) for s, r in patients if len(r) == k]
    slots = [s for s, _ in group]
    pos = []
    for s in P.SPLITS:
      m = slots.count(s)
      pos += [((j + 0.5) / m, P.SPLITS.index(s), s) for j in range(m)]
    order = [s for *_, s in sorted(pos)]
    rows = [r for _, r in group]
    positive = np.array([max(x['label'] for x in r) for r in rows])
    perm = rng.permutation(len(rows))
    ranked = sorted(perm, key=lambda i: -positive[i])         # stable: random within class
    out += [(split, rows[i]) for split, i in zip(order, ranked)]
  order_of = {s: i for i, s in enumerate(P.SPLITS)}
  shuffle = rng.permutation(len(out))                          # no order by label or size
  return [out[i] for i in sorted(range(len(out)), key=lambda i: (order_of[out[i][0]],
                                                                   shuffle[i]))]


def check_cohort(name: str) -> str:
  if name not in P.COHORTS:
    raise ConfigError(f'unknown cohort {name!r}; known: {", ".join(P.COHORTS)}')
  return name


def sample_cohort(scale: float, seed: int, labeled_scale: float | None = None,
                  cohort: str = 'paper', sites=None) -> pd.DataFrame:
  """The OsteoSim table: one row per vertebra ROI with its whole truth (no images, no paths).

  scale: multiplies every count of the paper's Table 1 (>= 1 where a count is non-zero).
  labeled_scale: multiplies the labeled (train/valid/test) counts instead, when given: a
    small unlabeled pre-training set beside a larger labeled one. None: `scale` for both.
  cohort: 'paper' (patients referred for DXA: each site's prevalence follows the paper's
    Table 2, params.REFERRAL_SHIFT_SD) or 'population' (NHANES-like adults).
  sites: the sites to draw (default all; a site's rows do not depend on the others).
  seed: the whole table is a function of (scale, labeled_scale, cohort, seed).
  """
  lscale = scale if labeled_scale is None else labeled_scale
  shifts = P.REFERRAL_SHIFT_SD[check_cohort(cohort)]
  rows = []
  for k, (site, spec) in enumerate(P.SITES.items()):
    if sites is not None and site not in sites:
      continue
    rng = np.random.default_rng([seed, 0, k])
    device = spec['device']
    groups = [(split, _counts(spec['patients'][j], lscale),
               _counts(spec['vertebrae'][j], lscale))
              for j, split in enumerate(P.SPLITS)]
    patients = []                     # (split slot, that patient's rows)
    for split, n_pat, n_vert in groups:
      if n_pat == 0:
        continue
      n_vert = int(np.clip(n_vert, n_pat, 4 * n_pat))
      age, female = _draw_patients(rng, n_pat)
      subj = draw_subjects(rng, age, female, shifts[site])
      picks = _labeled_levels(rng, n_pat, n_vert)
      scanners = rng.choice(spec['scanners'], n_pat)
      for i in range(n_pat):
        levels = [P.LABELED_LEVELS[j] for j in picks[i]]
        prow = vertebra_rows(rng, subj, i, age[i], female[i], levels, labeled=True)
        for r in prow:
          r.update(site=site, device=device, scanner=str(scanners[i]), bmd=r[f'bmd_{device}'],
                   t_score=r[f't_{device}'], label=r[f'label_{device}'])
        patients.append((split, prow))
    counter = {s: 0 for s in P.SPLITS}
    for split, prow in stratify_splits(patients, rng):
      pid = f'{site}-{split}-{counter[split]:05d}'
      counter[split] += 1
      for r in prow:
        r.update(patient_id=pid, split=split)
        rows.append(r)
    # Unlabeled pre-training vertebrae: other patients' chest/abdominal CTs, all levels.
    n_unl = _counts(spec['unlabeled'], scale)
    i = 0
    while n_unl > 0:
      age, female = _draw_patients(rng, 1)
      subj = draw_subjects(rng, age, female)
      levels = _scan_levels(rng, rng.random() < P.ENUMERATION_L6_RATE)[:n_unl]
      scanner = str(rng.choice(spec['scanners']))
      pid = f'{site}-pretrain-{i:05d}'
      for r in vertebra_rows(rng, subj, 0, age[0], female[0], levels, labeled=False):
        r.update(patient_id=pid, site=site, split='pretrain', device='', scanner=scanner)
        rows.append(r)
      n_unl -= len(levels)
      i += 1
  df = pd.DataFrame(rows)
  df.insert(0, 'roi_id', [f'{p}-{l}' for p, l in zip(df.patient_id, df.level)])
  for c in MANIFEST_COLUMNS:
    if c not in df:
      df[c] = np.nan
  df = df[MANIFEST_COLUMNS]
  for d in P.DEVICE_NAMES:
    df[f'label_{d}'] = df[f'label_{d}'].astype('Int64')
  df['label'] = df['label'].astype('Int64')
  return df
