"""Cut vertebra ROIs from real CTs into the OsteoSim layout (manifest.csv + rois/).

  python tools/extract_rois.py MANIFEST.csv OUT_DIR --labels verse|totalseg
      [--shape 32,32,32] [--spacing 1.8] [--quiet]

MANIFEST.csv columns: patient, ct_path, mask_path, site, device, level, bmd (DXA g/cm2; blank =
no DXA), optional sex, age, split, scanner; paths relative to the manifest's folder. CT: NIfTI,
NRRD or a DICOM series folder; mask: vertebra labels in the --labels numbering.
A bad input stops the run with one line `error: <file>: <problem>` (exit status 2) and no output.
"""
from __future__ import annotations

import argparse
import sys
import time

from osteojax.data import extract, io, labels
from osteojax.data import params as P


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('manifest', help='real-data manifest CSV')
  p.add_argument('out', help='output folder (replaced if it holds an earlier extraction)')
  p.add_argument('--labels', required=True, choices=sorted(labels.CONVENTIONS),
                 help='label numbering of the masks')
  p.add_argument('--shape', default=','.join(map(str, P.RoiGeometry.shape)),
                 help='ROI shape z,y,x in voxels')
  p.add_argument('--spacing', type=float, default=P.RoiGeometry.spacing_mm,
                 help='ROI isotropic spacing in mm')
  p.add_argument('--quiet', action='store_true')
  args = p.parse_args(argv)
  try:
    shape = tuple(int(v) for v in args.shape.split(','))
    assert len(shape) == 3 and min(shape) > 0 and args.spacing > 0
  except (ValueError, AssertionError):
    p.error(f'--shape {args.shape!r} / --spacing {args.spacing}: want z,y,x > 0 and mm > 0')
  geometry = P.RoiGeometry(shape=shape, spacing_mm=args.spacing)
  t0 = time.time()
  df = extract.extract_rois(args.manifest, args.out, args.labels, geometry,
                            log=None if args.quiet else print)
  if not args.quiet:
    print(f'[extract] {args.out}: {len(df)} ROIs, {df["label"].notna().sum()} with a label, '
          f'{time.time() - t0:.1f} s')
  return 0


if __name__ == '__main__':
  sys.exit(io.run_cli(main))
