"""How far does a reader of a few ROI statistics get, against the number of labelled vertebrae
it learns from? A sample-size curve for the distance between the models and the CT-only oracle.

  python tools/reader_curve.py [--data data/osteosim_paper_s0.05_l0.2_seed0_32x32x32] \
      [--extra-seed 1] [--extra-scale 1.0] [--sizes 250 500 1000 2000 4000 0] [--draws 3] \
      [--out results/reader_curve]
  python tools/reader_curve.py --model-data 4000 --out results/more_labels   # the model's point

The reader sees what the fine-tuned model sees of one vertebra, summarised by hand: the mean,
SD, 10th / 90th percentiles of its trabecular region (the baselines' eroded mask), the SD of the
volume's Laplacian and of its difference from a Gaussian blur over that region (high-pass
content, which each scanner's noise, kernel and slice thickness set), the SD of the blurred
volume, the mask's volume and extents (vertebra size) and the mean HU of the rim outside the
trabecular region; then the DXA device (each statistic also per device) and the level. Two
readers: an L2 logistic regression (C = 1, standardised inputs) and gradient-boosted trees
(sklearn's HistGradientBoosting, 300 iterations, rate 0.05, 15 leaves); fixed settings, not
tuned: this measures what the statistics carry, not a model to select.

Each reader learns from (a) the data set's own train split and (b) n vertebrae (whole patients,
`--draws` random draws per n; 0 = all) of an independent cohort generated with `--extra-seed`
and `--extra-scale` (the generator unchanged: the same cohort and geometry, another seed, more
labelled patients, few unlabelled ones; `osteosim.generate`, cached), and is scored on the data set's
validation and test splits, internal sites, vertebra level (the grid's headline metric).
Writes <out>/reader_curve.{json,md} and prints the table. Generated data: a property of the
generator at this ROI geometry, not of real CT.

`--model-data N` puts the fine-tuned model on the same curve instead: it writes
<out>/data<N>/manifest.csv, whose train split is N vertebrae (whole patients, the first draw of
the rule above) of the independent cohort's own train split and whose validation and test
splits are the data set's (absolute paths; ids of the drawn rows prefixed `s<seed>-`), and prints
the fine-tuning command that reads it (configs/finetune.py, `--config.data.dir`, the encoder of
a pre-training workdir): the model is then scored on the very test split of the readers.
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import pandas as pd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STATS = ('mean', 'sd', 'p10', 'p90', 'hp_sd', 'dog_sd', 'smooth_sd', 'volume', 'extent_z',
         'extent_y', 'extent_x', 'rim_mean')
LOG_STATS = ('sd', 'hp_sd', 'dog_sd', 'smooth_sd', 'volume')
INTERNAL = ('A', 'B', 'C')
EXTRA_SCALE = 0.004   # the independent cohort's unlabelled share: as few as the generator makes


def roi_stats(image: np.ndarray, mask: np.ndarray, spacing_mm) -> dict:
  """The reader's statistics of one ROI (image [z, y, x] HU, mask bool)."""
  from scipy import ndimage
  from osteojax.diagnosis import baselines
  region, _ = baselines.trabecular_region(mask, spacing_mm)
  a = np.asarray(image, np.float64)
  v = a[region]
  blur = ndimage.gaussian_filter(a, 1.0)
  idx = np.nonzero(mask)
  rim = mask & ~region
  return dict(mean=v.mean(), sd=v.std(), p10=np.percentile(v, 10), p90=np.percentile(v, 90),
              hp_sd=ndimage.laplace(a)[region].std(), dog_sd=(a - blur)[region].std(),
              smooth_sd=blur[region].std(), volume=float(mask.sum()),
              extent_z=float(np.ptp(idx[0])), extent_y=float(np.ptp(idx[1])),
              extent_x=float(np.ptp(idx[2])), rim_mean=a[rim].mean() if rim.any() else v.mean())


def table(data_dir: str, cache: str) -> pd.DataFrame:
  """Labelled manifest rows of data_dir with roi_stats columns (cached in `cache`, CSV)."""
  import SimpleITK as sitk
  from osteojax import progress as prog
  from osteojax.data import io as dio
  from osteojax.diagnosis import baselines
  rows = baselines.labeled_rows(pd.read_csv(os.path.join(data_dir, 'manifest.csv')),
                                ('train', 'valid', 'test'))
  if os.path.exists(cache):
    stats = pd.read_csv(cache)
  else:
    out = []
    for _, r in prog.bar(rows.iterrows(), total=len(rows), desc='ROI statistics', unit='roi'):
      img, mask = baselines._read_pair(data_dir, r)
      out.append(dict(roi_id=r.roi_id, **roi_stats(sitk.GetArrayFromImage(img),
                                                     sitk.GetArrayFromImage(mask) > 0,
                                                     img.GetSpacing()[::-1])))
    stats = pd.DataFrame(out)
    dio.atomic_write_text(cache, stats.to_csv(index=False))
  return rows.merge(stats, on='roi_id', validate='one_to_one')


def design(d: pd.DataFrame, devices, levels) -> np.ndarray:
  """Statistics (log of the scale ones), each also per device, device and level indicators."""
  x = d[list(STATS)].to_numpy(float).copy()
  for k, s in enumerate(STATS):
    if s in LOG_STATS:
      x[:, k] = np.log(x[:, k])
  dev = (d.device.astype(str).to_numpy()[:, None] == np.asarray(devices)[None]).astype(float)
  lev = (d.level.astype(str).to_numpy()[:, None] == np.asarray(levels)[None]).astype(float)
  per_device = np.concatenate([x * dev[:, [k]] for k in range(dev.shape[1])], axis=1)
  return np.concatenate([x, per_device, dev, lev], axis=1)


def fit_score(train: pd.DataFrame, evals: dict, devices, levels) -> dict:
  """{reader: {split: internal vertebra AUC}} of both readers learnt from `train`."""
  from sklearn.ensemble import HistGradientBoostingClassifier
  from sklearn.linear_model import LogisticRegression
  from sklearn.pipeline import make_pipeline
  from sklearn.preprocessing import StandardScaler
  from osteojax.evaluate import metrics
  x, y = design(train, devices, levels), train.label.astype(int).to_numpy()
  readers = dict(
      lr=make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000)).fit(x, y),
      trees=HistGradientBoostingClassifier(max_iter=300, learning_rate=0.05, max_leaf_nodes=15,
                                           random_state=0).fit(x, y))
  out = {}
  for name, model in readers.items():
    out[name] = {}
    for split, d in evals.items():
      d = d[d.site.isin(INTERNAL)]
      out[name][split] = float(metrics.auc(d.label.astype(int).to_numpy(),
                                           model.predict_proba(design(d, devices, levels))[:, 1]))
  return out


def draw_patients(rows: pd.DataFrame, n: int, rng) -> pd.DataFrame:
  """Whole patients of `rows`, in a random order, until at least n vertebrae."""
  counts = rows.groupby('patient_id').size().reindex(
      rng.permutation(rows.patient_id.unique())).cumsum()
  return rows[rows.patient_id.isin(counts.index[:int(np.searchsorted(counts, n)) + 1])]


def write_model_data(base: str, extra_dir: str, extra_seed: int, n: int, out: str) -> str:
  """The data folder of --model-data n (see the module doc); returns its path."""
  from osteojax.data import io as dio
  from osteojax.data import osteosim
  own = osteosim.read_manifest(base)
  extra = osteosim.read_manifest(extra_dir)
  train = draw_patients(extra[extra.split == 'train'], n, np.random.default_rng(0)).copy()
  evals = own[own.split.isin(['valid', 'test'])].copy()
  for df, root, tag in ((train, extra_dir, f's{extra_seed}-'), (evals, base, '')):
    df['roi_id'] = tag + df.roi_id.astype(str)
    df['patient_id'] = tag + df.patient_id.astype(str)
    for col in ('path', 'mask_path'):
      df[col] = [os.path.join(os.path.abspath(root), q) for q in df[col]]
  folder = os.path.join(out, f'data{n}')
  os.makedirs(folder, exist_ok=True)
  dio.atomic_write_text(os.path.join(folder, osteosim.MANIFEST),
                        pd.concat([train, evals]).to_csv(index=False))
  return folder


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--data', default='data/osteosim_paper_s0.05_l0.2_seed0_32x32x32',
                 help="the data set scored (make run's default)")
  p.add_argument('--extra-seed', type=int, default=1)
  p.add_argument('--extra-scale', type=float, default=1.0,
                 help='labelled scale of the independent cohort the curve draws from')
  p.add_argument('--sizes', type=int, nargs='+', default=[250, 500, 1000, 2000, 4000, 0],
                 help='training vertebrae drawn from the independent cohort (0: all)')
  p.add_argument('--draws', type=int, default=3)
  p.add_argument('--out', default='results/reader_curve')
  p.add_argument('--model-data', type=int, nargs='+', default=[], metavar='N',
                 help='write the data folder(s) for fine-tuning the model on N vertebrae of the '
                      'independent cohort, print the commands, and stop (no readers)')
  p.add_argument('--pretrained', default='runs/default/pretrain',
                 help='pre-training workdir named in the printed fine-tuning command')
  args = p.parse_args(argv)
  sys.path.insert(0, ROOT)
  from osteojax.data import io as dio
  from osteojax.data import osteosim
  from osteojax.data import params as P
  t0 = time.time()
  base = os.path.join(ROOT, args.data) if not os.path.isabs(args.data) else args.data
  with open(os.path.join(base, 'osteosim.json'), encoding='utf-8') as f:
    meta = json.load(f)
  os.makedirs(args.out, exist_ok=True)
  g = meta['geometry']
  geometry = P.RoiGeometry(tuple(g['shape']), g['spacing_mm'], g['supersample'])
  extra_dir = os.path.join(os.path.dirname(base), f'osteosim_{meta["cohort"]}_s{EXTRA_SCALE:g}_l'
                           f'{args.extra_scale:g}_seed{args.extra_seed}_'
                           + 'x'.join(map(str, geometry.shape)))
  osteosim.generate(extra_dir, EXTRA_SCALE, args.extra_seed, geometry, 0,
                    labeled_scale=args.extra_scale, cohort_name=meta['cohort'])
  for n in args.model_data:
    folder = write_model_data(base, extra_dir, args.extra_seed, n, args.out)
    print(f'python -m osteojax.main --config configs/finetune.py --workdir '
          f'{os.path.join(args.out, f"finetune{n}")} --config.data.dir={folder} '
          f'--config.init.checkpoint={args.pretrained}')
  if args.model_data:
    return 0
  own = table(base, os.path.join(args.out, 'stats_' + os.path.basename(base) + '.csv'))
  extra = table(extra_dir, os.path.join(args.out, 'stats_' + os.path.basename(extra_dir) + '.csv'))
  devices = sorted(own.device.astype(str).unique())
  levels = list(P.LEVELS)
  evals = {s: own[own.split == s] for s in ('valid', 'test')}
  rows = [dict(train='own train split', size=int((own.split == 'train').sum()),
               n=int((own.split == 'train').sum()), draw=0,
               **fit_score(own[own.split == 'train'], evals, devices, levels))]
  rng = np.random.default_rng(0)
  for n in args.sizes:
    whole = n <= 0 or n >= len(extra)
    for draw in range(1 if whole else args.draws):
      sub = extra if whole else draw_patients(extra, n, rng)
      rows.append(dict(train=f'independent cohort (seed {args.extra_seed})',
                       size=len(extra) if whole else n, n=len(sub), draw=draw,
                       **fit_score(sub, evals, devices, levels)))
      print(f'[reader] n={len(sub)} draw {draw}: ' + ', '.join(
          f'{r} {s} {rows[-1][r][s]:.3f}' for r in ('lr', 'trees') for s in evals), flush=True)
  lines = ['| training vertebrae | from | draws | LR valid | LR test | trees valid | trees test |',
           '|---|---|---|---|---|---|---|']
  for (train, size), g in pd.DataFrame(rows).groupby(['train', 'size'], sort=False):
    def cell(reader, split):
      v = np.array([r[split] for r in g[reader]])
      return f'{v.mean():.3f}' + (f' ± {v.std(ddof=1):.3f}' if len(v) > 1 else '')
    lines.append(f'| {size} | {train} | {len(g)} | ' + ' | '.join(
        cell(r, s) for r in ('lr', 'trees') for s in ('valid', 'test')) + ' |')
  head = (f'Readers of ROI statistics (tools/reader_curve.py), scored on {os.path.basename(base)} '
          f'({meta.get("cohort", "paper")} cohort), internal sites, vertebra AUC; mean ± sd over '
          f'draws of training patients. Generated data. {time.time() - t0:.0f} s.\n')
  md = head + '\n' + '\n'.join(lines) + '\n'
  dio.atomic_write_text(os.path.join(args.out, 'reader_curve.md'), md)
  dio.atomic_write_text(os.path.join(args.out, 'reader_curve.json'),
                        json.dumps(dict(data=base, extra=extra_dir, rows=rows), indent=1))
  print(md)
  return 0


if __name__ == '__main__':
  sys.exit(main())
