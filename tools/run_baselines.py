"""Run the clinical baselines and the oracle on a data folder; write predictions and tables.

  python tools/run_baselines.py --data data/osteosim_paper_s0.05_l0.2_seed0_32x32x32 --out results/baselines \
      [--base hu160]

Writes <out>/<row>.csv for each row of baselines.BASELINES (hu160, hu110, radiomics_lr,
radiomics_ridge, the oracles; predictions tables, see osteojax/evaluate/diagnosis.py) and their
evaluation: results.md, results.json, roc_vertebra.png, roc_patient.png. Radiomics features are cached in <out>/cache (or --cache).
Prints the Markdown tables. Bad input: one line `error: <file>: <problem>`, exit status 2.
"""
import argparse
import os
import sys

from osteojax.diagnosis import baselines
from osteojax.data import io as dio


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--data', required=True, help='data folder holding manifest.csv')
  ap.add_argument('--out', required=True, help='output folder')
  ap.add_argument('--cache', default=None, help='radiomics feature cache (default <out>/cache)')
  ap.add_argument('--base', default=None, choices=baselines.BASELINES,
                  help='paired tests (DeLong, McNemar) of the others against this row')
  ap.add_argument('--ridge-readout', default='t', choices=baselines.RIDGE_READOUTS,
                  help="radiomics_ridge's diagnosis: 't', the T-score of its BMD at the "
                       "device's reference (the fine-tuning default's readout), or 'bmd'")
  ap.add_argument('--quiet', action='store_true', help='no progress bars')
  args = ap.parse_args(argv)
  baselines.run_baselines(args.data, args.out, args.cache, progress=not args.quiet,
                          base=args.base, ridge_score=args.ridge_readout)
  with open(os.path.join(args.out, 'results.md'), encoding='utf-8') as f:
    print(f.read())
  return 0


if __name__ == '__main__':
  sys.exit(dio.run_cli(main))
