"""Predict per-vertebra BMD, T-scores, WHO class and P(osteoporosis) on a CT.

  python tools/predict.py --ct CT.nii.gz --mask MASK.nii.gz --checkpoint runs/finetune \
      --labels verse --sex F --out runs/predict

CT and mask: NIfTI, NRRD or a DICOM series folder; the mask holds vertebra labels in the
--labels numbering (VerSe or TotalSegmentator) on the CT's grid. A generated torso works the
same way (tools/make_torso.py writes ct.nii.gz + mask.nii.gz). --checkpoint: a fine-tuning
workdir (configs/finetune.py). Writes <out>/prediction.json and <out>/prediction.png and prints
a table. Bad input: one line `error: <file>: <problem>`, exit status 2.
"""
import argparse
import sys

from osteojax.diagnosis import predict
from osteojax.data import io, labels


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--ct', required=True)
  ap.add_argument('--mask', required=True, help='vertebra label mask on the CT grid')
  ap.add_argument('--checkpoint', required=True, help='fine-tuning workdir')
  ap.add_argument('--labels', required=True, choices=sorted(labels.CONVENTIONS))
  ap.add_argument('--sex', required=True, choices=predict.SEXES,
                  help='for the T-score reference')
  ap.add_argument('--out', required=True, help='output folder')
  args = ap.parse_args(argv)
  report, x = predict.predict_ct(args.ct, args.mask, args.checkpoint, args.labels, args.sex)
  js, png = predict.write_report(report, x, args.out)
  print(f'{"level":6s} {"device":9s} {"BMD":>7s} {"T":>6s}  {"WHO":16s} {"P(op)":>6s}')
  for v in report['vertebrae']:
    for d, r in v['devices'].items():
      t = '   n/a' if r['t_score'] is None else f'{r["t_score"]:+6.2f}'
      print(f'{v["level"]:6s} {d:9s} {r["bmd"]:7.3f} {t}  {r["who_class"]:16s} '
            f'{r["p_osteoporosis"]:6.3f}')
  print(f'report: {js}, {png}')
  return 0


if __name__ == '__main__':
  sys.exit(io.run_cli(main))
