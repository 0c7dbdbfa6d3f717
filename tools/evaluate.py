"""Evaluate fine-tuned checkpoints the paper's way: per-site tables, paired tests, ROC curves.

  python tools/evaluate.py --workdir runs/finetune
  python tools/evaluate.py --workdir runs/ft_moe --workdir runs/ft_scratch \
      --name moe --name scratch --base moe --baselines results/baselines --out results/eval

Each --workdir is a fine-tuning run (configs/finetune.py); its kept checkpoint (best on validation) predicts
the valid and test splits of its data set (<workdir>/predictions.csv is rewritten). The
decision threshold is fixed on validation (osteojax/evaluate/diagnosis.py), never on test.
--baselines adds the prediction CSVs of tools/run_baselines.py as rows. Writes results.md,
results.json, roc_vertebra.png, roc_patient.png to --out (default <first workdir>/eval) and
prints the tables. --split valid reads the validation split instead (where recipes are
chosen; the thresholds are still those fixed on it). Bad input: one line
`error: <file>: <problem>`, exit status 2.
"""
import argparse
import glob
import os
import sys

from osteojax.diagnosis import finetune
from osteojax.data import io as dio
from osteojax.diagnosis import pool_data
from osteojax.evaluate import diagnosis


def predict_workdir(workdir: str):
  """Predictions table of a fine-tuning workdir's kept checkpoint on its valid/test split."""
  try:
    config, model, variables, stats = finetune.load(workdir)
  except (FileNotFoundError, ValueError) as e:
    raise dio.OsteoDataError(workdir, str(e).replace(f'{workdir}: ', '')) from None
  pools = pool_data.ensure_pool(config, ('valid', 'test'), progress=False)
  preds = finetune.predict_pools(model, variables, pools, stats, with_bmd=config.loss.bmd > 0,
                                 score=config.get('score', 'prob'))
  diagnosis.write_predictions(preds, os.path.join(workdir, finetune.PREDICTIONS))
  return preds


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--workdir', action='append', required=True, help='fine-tuning run (repeat)')
  ap.add_argument('--name', action='append', default=None, help='row name per --workdir')
  ap.add_argument('--baselines', default=None, help='folder of tools/run_baselines.py CSVs')
  ap.add_argument('--base', default=None, help='paired tests of the other rows against this one')
  ap.add_argument('--out', default=None, help='output folder (default <first workdir>/eval)')
  ap.add_argument('--split', default='test', choices=diagnosis.SPLITS,
                  help='the split the tables read (default test)')
  args = ap.parse_args(argv)
  names = args.name or [os.path.basename(os.path.normpath(w)) for w in args.workdir]
  if len(names) != len(args.workdir):
    ap.error('give one --name per --workdir (or none)')
  models = {n: predict_workdir(w) for n, w in zip(names, args.workdir)}
  fixed = []                          # the baselines: one table stands for every seed
  if args.baselines:
    csvs = sorted(glob.glob(os.path.join(args.baselines, '*.csv')))
    if not csvs:
      raise dio.OsteoDataError(args.baselines, 'no baseline prediction CSVs here')
    for path in csvs:
      fixed.append(os.path.splitext(os.path.basename(path))[0])
      models[fixed[-1]] = diagnosis.read_predictions(path)
  out = args.out or os.path.join(args.workdir[0], 'eval')
  summary = diagnosis.write_report(models, out, split=args.split, base=args.base,
                                   deterministic=fixed)
  print(diagnosis.markdown_report(summary))
  print(f'tables and ROC curves: {out}/')
  return 0


if __name__ == '__main__':
  sys.exit(dio.run_cli(main))
