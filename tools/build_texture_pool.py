"""Build the texture pool {original, TF1..TF4} of every ROI in a manifest.

  python tools/build_texture_pool.py --manifest rois.csv --out pools/ [--binWidth 25]
      [--kernelRadius 1] [--maskedKernel true] [--batch-size 4] [--keep-going]

Input manifest (CSV): columns roi_id, path (ROI image, NIfTI/any SimpleITK format, HU),
mask_path (ROI mask, label > 0 = vertebral body), paths relative to the manifest's folder or
absolute; other columns are ignored (an OsteoSim or extract_rois manifest works as it is).
Output, cache and resume: see osteojax/texture/builder.py. Errors (unreadable image or mask,
shape mismatch, empty mask, NaN voxels, missing manifest columns, too many gray levels for
exact int32 sums) are one line naming the file; the exit status is non-zero (2 for manifest
errors, 1 for ROI errors).
"""

from __future__ import annotations

import argparse
import sys

from osteojax.texture import builder
from osteojax.texture.builder import TMP_TAG, pool_lib, sidecar_key  # noqa: F401 (tests)
from osteojax.texture.settings import GLCMSettings


def _bool(s: str) -> bool:
  if s.lower() in ('1', 'true', 'yes'):
    return True
  if s.lower() in ('0', 'false', 'no'):
    return False
  raise argparse.ArgumentTypeError(f'expected true/false, got {s!r}')


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--manifest', required=True, help='input CSV: roi_id, path, mask_path')
  p.add_argument('--out', required=True, help='output directory')
  p.add_argument('--binWidth', type=float, default=25.0)
  p.add_argument('--binCount', type=int, default=None)
  p.add_argument('--kernelRadius', type=int, default=1)
  p.add_argument('--maskedKernel', type=_bool, default=True)
  p.add_argument('--force2D', type=_bool, default=False)
  p.add_argument('--force2Ddimension', type=int, default=0)
  p.add_argument('--symmetricalGLCM', type=_bool, default=True)
  p.add_argument('--weightingNorm', default=None)
  p.add_argument('--batch-size', type=int, default=4, help='ROIs per vmapped batch')
  p.add_argument('--chunk', type=int, default=128, help='ROIs read ahead per compute round')
  p.add_argument('--workers', type=int, default=2, help='reader threads')
  p.add_argument('--keep-going', action='store_true', help='skip bad ROIs instead of stopping')
  p.add_argument('--no-progress', action='store_true')
  return p.parse_args(argv)


def main(argv=None) -> int:
  a = parse_args(argv)
  try:
    settings = GLCMSettings(binWidth=a.binWidth, binCount=a.binCount,
                            kernelRadius=a.kernelRadius, maskedKernel=a.maskedKernel,
                            force2D=a.force2D, force2Ddimension=a.force2Ddimension,
                            symmetricalGLCM=a.symmetricalGLCM, weightingNorm=a.weightingNorm)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  try:
    rows = builder.read_manifest(a.manifest)
  except builder.ManifestError as e:
    print(str(e), file=sys.stderr)
    return 2
  return builder.build_pool(rows, a.out, settings, a.batch_size, a.chunk, a.workers,
                            a.keep_going, not a.no_progress)


if __name__ == '__main__':
  sys.exit(main())
