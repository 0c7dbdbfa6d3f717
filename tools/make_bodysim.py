"""Generate a BodySim data set (2-D whole-body DXA / MRI pairs with alignment truth).

  python tools/make_bodysim.py --out data/bodysim                # CPU default: scale 4
  python tools/make_bodysim.py --out data/bodysim_full --scale 1 # 800 x 300 / 501 x 224

Writes <out>/{train,val,test}/<id>/{dxa,mri,dxa_mask,mri_mask}.nii, truth_<split>.json,
bodysim.json (generator version and every parameter) and bodysim_examples.png, atomically.
An existing folder is replaced only if it is a BodySim output.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from osteojax.data import bodysim, bodysim_figures  # noqa: E402
from osteojax.data.io import run_cli  # noqa: E402


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--out', required=True)
  p.add_argument('--scale', type=int, default=4, help='down-scaling factor (1 = full size)')
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--train', type=int, default=bodysim.SPLIT_SIZES['train'])
  p.add_argument('--val', type=int, default=bodysim.SPLIT_SIZES['val'])
  p.add_argument('--test', type=int, default=bodysim.SPLIT_SIZES['test'])
  p.add_argument('--workers', type=int, default=min(os.cpu_count() or 1, 4))
  args = p.parse_args(argv)
  if args.scale < 1:
    p.error('--scale must be >= 1')
  if min(args.train, args.val, args.test) < 0:
    p.error('split sizes must be >= 0')
  t = time.time()
  sizes = dict(train=args.train, val=args.val, test=args.test)
  bodysim.generate(args.out, args.scale, args.seed, sizes, args.workers)
  split = next(s for s in ('test', 'val', 'train') if sizes[s])
  png = bodysim_figures.plot_pairs(bodysim.load_pairs(args.out, split, limit=4),
                                   os.path.join(args.out, 'bodysim_examples.png'))
  print(f'[bodysim] {sum(sizes.values())} subjects at scale {args.scale} in '
        f'{time.time() - t:.1f} s -> {args.out} ({png})')
  return 0


if __name__ == '__main__':
  sys.exit(run_cli(main))
