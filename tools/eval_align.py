"""Evaluate an aligner checkpoint: retrieval (recall@1/5/10, mean rank) and verification (ROC AUC,
EER, TPR at FPR = 1%) on a BodySim split; writes Markdown, JSON, ROC and recall@K PNGs.

  python tools/eval_align.py --workdir runs/align [--split test] [--data data/bodysim_s4_seed0]
                             [--out runs/align]

Several workdirs -> one table (`--table results/align.md`), e.g. seeds and channel subsets.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from osteojax.data.io import OsteoDataError, atomic_write_text, run_cli  # noqa: E402


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--workdir', nargs='+', required=True, help='aligner run folder(s)')
  p.add_argument('--split', default='test')
  p.add_argument('--data', default=None, help='BodySim folder (default: the run config\'s)')
  p.add_argument('--out', default=None, help='output folder (default: each workdir)')
  p.add_argument('--limit', type=int, default=None, help='first N pairs of the split')
  p.add_argument('--table', default=None, help='also write one Markdown table of all runs')
  args = p.parse_args(argv)
  from osteojax.align import retrieval   # after argparse: --help stays fast
  rows = []
  for w in args.workdir:
    out = os.path.join(args.out, os.path.basename(os.path.normpath(w))) if args.out else None
    try:
      rows.append(retrieval.evaluate_run(w, args.split, args.data, out, args.limit))
    except ValueError as e:          # bad scans (channels, NaNs, empty): one line, exit 2
      raise OsteoDataError(w, str(e)) from None
  if args.table:
    os.makedirs(os.path.dirname(os.path.abspath(args.table)), exist_ok=True)
    atomic_write_text(args.table, ''.join(
        [retrieval.HEADER + '\n'] + [retrieval.markdown_row(
            os.path.basename(os.path.normpath(r['workdir'])), r['metrics']) + '\n' for r in rows]))
  return 0


if __name__ == '__main__':
  sys.exit(run_cli(main))
