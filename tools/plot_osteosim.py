"""Look at an OsteoSim data set: vertebra mid-slices across the BMD range and sites, and the
T-score distribution per DXA maker showing how the makers disagree.

  python tools/plot_osteosim.py --data data/osteosim_paper_s0.05_l0.2_seed0_32x32x32 --out osteosim.png
"""
import argparse

from osteojax.data import figures


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--data', required=True, help='an OsteoSim data set folder')
  ap.add_argument('--out', default='osteosim.png')
  args = ap.parse_args()
  print(figures.plot_osteosim(args.data, args.out))


if __name__ == '__main__':
  main()
