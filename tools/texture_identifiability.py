"""Does a rendered OsteoSim ROI show what a density reader cannot: marrow fat against bone?

  python tools/texture_identifiability.py [--hu 100] [--fat 35 65] [--n 30] \
      [--geometry 32:1.8 64:0.9] [--scanners A1 A2 B1 B2 C1 D1 D2] [--out results/identifiability]

The CT-only oracle (osteojax/data/oracle.py) is the posterior given the rendered trabecular bone
fraction and marrow fat; the density-reader oracle sees only their mix, the mean trabecular HU.
The gap between the two is what only texture can close, if the images show it. This tool
renders ROIs of one vertebra (the first L1 of the generated cohort, its size and level) whose
bone fraction is solved so that the mean trabecular HU is the same (`--hu`) at a low and a high
marrow fat (`--fat`, PDFF %), for each scanner and ROI geometry, through the generator's own
phantom (osteojax/data/phantom.py: sheets, scanner blur, noise; each scanner and group its own
random draws), and measures on each ROI the mean and the SD of its trabecular region (the
baselines' eroded mask) and the SD of the volume's discrete Laplacian over that region (its
high-pass content, which each scanner's noise, kernel and slice thickness set). AUC 0.5 for a
statistic: it cannot tell the two apart; 1.0: it always can. The last column reads the two SDs
together: a logistic regression on their logarithms, its AUC out of fold (5 folds). Rows pooled
over a site's scanners stand for a reader told the site's DXA device (as the model is) but not
which of its CT scanners took the scan; the last row pools every scanner.
Writes <out>/identifiability.{json,md} and prints the table. Generated data: a property of the
generator, not of real CT.
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import pandas as pd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STATS = ('mean', 'sd', 'hp_sd')
FOLDS = 5


def render_stats(row: dict, geometry, n: int, seed: int) -> np.ndarray:
  """[n, 3] (mean, SD, SD of the Laplacian) of the trabecular region of n ROIs of `row` (fresh
  texture and noise)."""
  from scipy import ndimage
  from osteojax.data import phantom
  from osteojax.diagnosis import baselines
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    ct, mask = phantom.render_roi(row, geometry, rng)
    region, _ = baselines.trabecular_region(mask, (geometry.spacing_mm,) * 3)
    ct = ct.astype(np.float64)
    v = ct[region]
    out.append((v.mean(), v.std(), ndimage.laplace(ct)[region].std()))
  return np.asarray(out)


def base_row(seed: int) -> dict:
  """The vertebra every ROI is rendered from: the first labeled L1 of the generated cohort
  (its size and level; scanner, marrow fat and bone fraction are set per group)."""
  from osteojax.data import cohort
  t = cohort.sample_cohort(0.02, seed)
  return t[(t.level == 'L1') & (t.split != 'pretrain')].iloc[0].to_dict()


def compare(row: dict, geometry, hu: float, fats, n: int, seed: int) -> tuple[dict, list]:
  """The two fat levels at one mean HU: (per statistic each group's mean and SD and the AUC,
  the two groups' [n, 3] statistics)."""
  from osteojax.data import cohort
  groups, bvtv = [], []
  for i, fat in enumerate(fats):
    r = dict(row, pdff=float(fat), bvtv=float(cohort.bvtv_from_hu(hu, fat)))
    bvtv.append(r['bvtv'])
    groups.append(render_stats(r, geometry, n, seed + 1000 * i))
  return dict(bvtv=bvtv, **summarise(*groups)), groups


def summarise(lo: np.ndarray, hi: np.ndarray) -> dict:
  """Per statistic: each group's mean and SD over ROIs and the AUC between the groups; and
  'both_sd': the out-of-fold AUC of the two SDs read together (joint_auc)."""
  from osteojax.evaluate import metrics
  y = np.r_[np.zeros(len(lo)), np.ones(len(hi))]
  out = {name: dict(low_fat=[float(lo[:, k].mean()), float(lo[:, k].std(ddof=1))],
                    high_fat=[float(hi[:, k].mean()), float(hi[:, k].std(ddof=1))],
                    auc=float(metrics.auc(y, np.r_[lo[:, k], hi[:, k]])))
         for k, name in enumerate(STATS)}
  sds = [STATS.index('sd'), STATS.index('hp_sd')]
  out['both_sd'] = dict(auc=joint_auc(lo[:, sds], hi[:, sds]))
  return out


def joint_auc(lo: np.ndarray, hi: np.ndarray, folds: int = FOLDS) -> float:
  """AUC of a logistic regression on the log of the columns of lo [n, k] (group 0) and hi
  [m, k] (group 1), each ROI scored by a model fit without its fold (stratified, unshuffled:
  in a pooled row, whose ROIs come scanner by scanner, a fold is mostly ROIs of scanners the
  fit saw little or nothing of)."""
  from sklearn.linear_model import LogisticRegression
  from sklearn.model_selection import StratifiedKFold, cross_val_predict
  from sklearn.pipeline import make_pipeline
  from sklearn.preprocessing import StandardScaler
  from osteojax.evaluate import metrics
  x = np.log(np.r_[lo, hi])
  y = np.r_[np.zeros(len(lo)), np.ones(len(hi))]
  folds = min(folds, len(lo), len(hi))
  model = make_pipeline(StandardScaler(), LogisticRegression(C=10.0, max_iter=1000))
  p = cross_val_predict(model, x, y, cv=StratifiedKFold(folds), method='predict_proba')[:, 1]
  return float(metrics.auc(y, p))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--hu', type=float, default=100.0,
                 help='mean trabecular HU of both groups (near the classes\' boundary)')
  p.add_argument('--fat', type=float, nargs=2, default=(35.0, 65.0),
                 help='marrow fat (PDFF %%) of the two groups')
  p.add_argument('--n', type=int, default=30, help='ROIs per group')
  p.add_argument('--geometry', nargs='+', default=['32:1.8', '64:0.9'],
                 help='ROI edge:spacing mm (the CPU default, the paper size)')
  p.add_argument('--scanners', nargs='+', default=None, help='default: every scanner')
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--out', default='results/identifiability')
  a = p.parse_args(argv)
  sys.path.insert(0, ROOT)
  from osteojax.data import cohort, io as dio, params as P
  if a.n < 2:
    p.error('--n must be at least 2')
  scanners = a.scanners or list(P.SCANNERS)
  bad = sorted(set(scanners) - set(P.SCANNERS))
  if bad:
    p.error(f'unknown scanner(s) {bad}; known: {" ".join(P.SCANNERS)}')
  geometries = []
  for g in a.geometry:
    try:
      edge, sp = g.split(':')
      geometries.append(P.RoiGeometry((int(edge),) * 3, float(sp)))
    except ValueError:
      p.error(f'--geometry {g!r}: expected edge:spacing, e.g. 32:1.8')
  base = base_row(a.seed)
  bv = [float(cohort.bvtv_from_hu(a.hu, fat)) for fat in a.fat]   # both groups, any scanner
  rows, t0 = [], time.time()
  for g in geometries:
    drawn = {}
    for i, s in enumerate(scanners):      # every scanner its own draws (seed offset)
      r, drawn[s] = compare(dict(base, scanner=s), g, a.hu, a.fat, a.n,
                            a.seed + 10_000 * (i + 1))
      rows.append(dict(edge=g.shape[0], spacing_mm=g.spacing_mm, scanner=s, **r))
      print(f'[identifiability] {g.shape[0]}^3 at {g.spacing_mm:g} mm, scanner {s}: SD AUC '
            f'{r["sd"]["auc"]:.2f}, both SDs {r["both_sd"]["auc"]:.2f}, mean AUC '
            f'{r["mean"]["auc"]:.2f} '
            f'({time.time() - t0:.0f} s)', file=sys.stderr, flush=True)
    pools = [(f'site {site} ({", ".join(info["scanners"])}), pooled', info['scanners'])
             for site, info in P.SITES.items()
             if len(info['scanners']) > 1 and set(info['scanners']) <= set(drawn)]
    if len(drawn) > 1 and all(set(m) != set(drawn) for _, m in pools):
      pools.append(('all, pooled', list(drawn)))
    for name, members in pools:  # a reader not told the scanner: its noise and blur vary
      rows.append(dict(edge=g.shape[0], spacing_mm=g.spacing_mm, scanner=name, bvtv=bv,
                       **summarise(*(np.concatenate([drawn[m][k] for m in members])
                                     for k in (0, 1)))))
  lines = [f'Generated OsteoSim ROIs (osteojax/data/phantom.py), one L1, mean trabecular HU '
           f'{a.hu:g} in both groups: marrow fat {a.fat[0]:g} % (bone fraction {bv[0]:.3f}) '
           f'against {a.fat[1]:g} % ({bv[1]:.3f}), {a.n} ROIs each (fresh texture and noise). '
           'Trabecular region mean, SD and high-pass SD (SD of the Laplacian) in HU, mean ± sd '
           'over ROIs; AUC of each statistic between the groups (0.5: blind); last column: the '
           f'two SDs read together (logistic regression, AUC out of {FOLDS} folds).', '',
           '| ROI | scanner | mean, low fat | mean, high fat | mean AUC | SD, low fat | '
           'SD, high fat | SD AUC | high-pass SD, low fat | high-pass SD, high fat | '
           'high-pass SD AUC | both SDs AUC |', '|' + '---|' * 12]
  def cell(v):
    return f'{v[0]:.1f} ± {v[1]:.1f}'

  for r in rows:
    lines.append(f'| {r["edge"]}^3, {r["spacing_mm"]:g} mm | {r["scanner"]} | '
                 f'{cell(r["mean"]["low_fat"])} | {cell(r["mean"]["high_fat"])} | '
                 f'{r["mean"]["auc"]:.2f} | {cell(r["sd"]["low_fat"])} | '
                 f'{cell(r["sd"]["high_fat"])} | {r["sd"]["auc"]:.2f} | '
                 f'{cell(r["hp_sd"]["low_fat"])} | {cell(r["hp_sd"]["high_fat"])} | '
                 f'{r["hp_sd"]["auc"]:.2f} | {r["both_sd"]["auc"]:.2f} |')
  text = '\n'.join(lines) + '\n'
  os.makedirs(a.out, exist_ok=True)
  dio.atomic_write_text(os.path.join(a.out, 'identifiability.md'), text)
  dio.atomic_write_text(os.path.join(a.out, 'identifiability.json'), json.dumps(
      dict(hu=a.hu, fat=list(a.fat), n=a.n, seed=a.seed, rows=rows), indent=1))
  print(text)


if __name__ == '__main__':
  main()
