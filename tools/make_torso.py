"""Make a whole-spine torso CT phantom with vertebra labels, truth and a real-data manifest.

  python tools/make_torso.py --out data/torso [--levels T11:L4] [--labels totalseg|verse]
      [--seed 0] [--spacing 0.9,0.9,2.0] [--flip xy] [--format nifti|nrrd|dicom]
      [--device hologic] [--scanner A1] [--margin-mm 6]

Writes <out>/{ct.nii.gz | ct.nrrd | ct_dicom/, mask.nii.gz | mask.nrrd, truth.json, manifest.csv}
(see osteojax/data/torso.py); `tools/extract_rois.py <out>/manifest.csv ...` cuts its ROIs.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from osteojax.data import io, labels, torso


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--out', required=True, help='output folder (replaced if it holds a torso)')
  p.add_argument('--levels', default='T11:L4', help='first:last vertebra, superior first')
  p.add_argument('--labels', default='totalseg', choices=sorted(labels.CONVENTIONS),
                 help='label numbering of the mask')
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--spacing', default='0.9,0.9,2.0', help='voxel size x,y,z in mm')
  p.add_argument('--flip', default='', help="axes stored reversed, e.g. 'xy' (default none)")
  p.add_argument('--format', default='nifti', choices=sorted(torso.CT_NAMES))
  p.add_argument('--device', default='hologic', help='DXA device of the made-up BMD')
  p.add_argument('--scanner', default='', help="CT scanner of params.SCANNERS ('' = the site's)")
  p.add_argument('--margin-mm', type=float, default=torso.TorsoSpec.margin_mm,
                 help='soft tissue scanned above the first / below the last vertebra (mm); at '
                      'the default the end vertebrae\'s ROIs reach past the scan')
  return p, p.parse_args(argv)


def main(argv=None):
  parser, args = parse_args(argv)
  first, _, last = args.levels.partition(':')
  try:
    spacing = tuple(float(v) for v in args.spacing.split(','))
    assert len(spacing) == 3 and min(spacing) > 0
  except (ValueError, AssertionError):
    parser.error(f'--spacing {args.spacing!r}: want three positive numbers x,y,z')
  if not args.margin_mm >= 0:
    parser.error(f'--margin-mm {args.margin_mm}: want a length >= 0')
  spec = torso.TorsoSpec(first=first, last=last or first, spacing=spacing,
                         flip=tuple(args.flip), scanner=args.scanner, device=args.device,
                         convention=args.labels, margin_mm=args.margin_mm)
  t0 = time.time()
  try:
    made = torso.make_torso(spec, np.random.default_rng(args.seed), patient=f'torso{args.seed}')
  except ValueError as e:
    parser.error(str(e))
  torso.write_torso(made, args.out, args.format)
  t = made['truth']
  print(f'[make_torso] {args.out}: {len(t["vertebrae"])} vertebrae '
        f'{t["vertebrae"][0]["level"]}..{t["vertebrae"][-1]["level"]}, size {t["size"]}, '
        f'{args.labels} labels, {args.format}, {time.time() - t0:.2f} s')
  return 0


if __name__ == '__main__':
  sys.exit(io.run_cli(main))
