"""Generate an OsteoSim data set (vertebra CT ROIs + DXA truth) and print its summary.

  python tools/make_osteosim.py --out data/osteosim --scale 0.05
  python tools/make_osteosim.py --out data/osteosim_full --scale 1.0 --shape 64 --spacing 0.9

The same as `python -m osteojax.main --config configs/osteosim.py`, for use outside the entry
point. A second call with the same arguments reuses the data set; a killed call resumes.
"""
import argparse
import json
import os

from osteojax.data import osteosim, report
from osteojax.data import params as P


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--out', required=True, help='output folder')
  ap.add_argument('--scale', type=float, default=0.05, help='fraction of the paper Table 1')
  ap.add_argument('--seed', type=int, default=0)
  ap.add_argument('--cohort', choices=P.COHORTS, default='paper',
                  help="'paper': each site's prevalence follows the paper's Table 2; "
                       "'population': NHANES-like adults")
  ap.add_argument('--shape', type=int, default=32, help='ROI edge in voxels (cubic)')
  ap.add_argument('--spacing', type=float, default=1.8, help='ROI isotropic spacing, mm')
  ap.add_argument('--supersample', type=int, default=2)
  ap.add_argument('--workers', type=int, default=0, help='processes (0: all cores)')
  args = ap.parse_args()
  geometry = P.RoiGeometry((args.shape,) * 3, args.spacing, args.supersample)
  df = osteosim.generate(args.out, args.scale, args.seed, geometry, args.workers,
                         cohort_name=args.cohort)
  with open(os.path.join(args.out, osteosim.INFO), encoding='utf-8') as f:
    print(report.summary_markdown(df, json.load(f)))


if __name__ == '__main__':
  main()
