"""Predict per-vertebra BMD, T-scores, WHO class and P(osteoporosis) on CTs: one, or a batch.

One study:
  python tools/predict.py --ct CT.nii.gz --mask MASK.nii.gz --checkpoint runs/finetune \\
      --labels verse --sex F --out runs/predict [--calibrate] [--phase native]
Batch (a CSV with columns study, ct, mask, sex and optional labels, phase):
  python tools/predict.py --manifest studies.csv --checkpoint runs/finetune --out runs/batch \\
      [--labels totalseg] [--calibrate] [--phase native]

CT: NIfTI, NRRD, or a DICOM folder; a folder holding several series (in it or in subfolders)
gives the axial ORIGINAL\\PRIMARY CT series with the most slices (at least
io.MIN_SERIES_SLICES), and the pick is printed and recorded. The mask holds vertebra labels in
the --labels numbering (VerSe or TotalSegmentator) on the CT's grid; a generated torso
(tools/make_torso.py) works the same way. --checkpoint: a fine-tuning workdir
(configs/finetune.py). --calibrate: phantomless HU calibration from air and subcutaneous fat
(osteojax/diagnosis/calibration.py). --phase is recorded (the model was trained on native-phase
CT; no correction is applied). Every vertebra passes quality gates (border, few_voxels,
level_order, roi_outside): a flagged vertebra is predicted but marked, and left out of the
patient summary (lowest L1-L4 T-score per device and its WHO class).

Single: <out>/prediction.json and prediction.png, a table on stdout; bad input: one line
`error: <file>: <problem>`, exit status 2, nothing written.
Batch: <out>/<study>/prediction.json + prediction.png, <out>/vertebrae.csv (one row per
vertebra), <out>/patients.csv (one per study), <out>/run.json (version, git revision,
checkpoint, config digest, times, per-study status ok / failed / skipped and error). A failing
study is recorded and the batch goes on (exit status 1 if any failed); a rerun skips the
studies whose prediction.json exists.
"""
import argparse
import os
import sys

from osteojax.diagnosis import predict
from osteojax.data import io, labels


def parse_args(argv):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                               epilog=__doc__.split('\n', 2)[2],
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument('--ct', help='one study: CT file or DICOM folder')
  ap.add_argument('--mask', help='one study: vertebra label mask on the CT grid')
  ap.add_argument('--sex', choices=predict.SEXES, help='one study: for the T-score reference')
  ap.add_argument('--manifest', help='batch: CSV of studies (study, ct, mask, sex[, labels, '
                                     'phase])')
  ap.add_argument('--checkpoint', required=True, help='fine-tuning workdir')
  ap.add_argument('--labels', choices=sorted(labels.CONVENTIONS),
                  help='mask numbering (batch: for rows without a labels column value)')
  ap.add_argument('--phase', default='native', choices=predict.PHASES,
                  help='contrast phase, recorded (batch: for rows without a phase value)')
  ap.add_argument('--calibrate', action='store_true',
                  help='phantomless HU calibration from air and subcutaneous fat')
  ap.add_argument('--out', required=True, help='output folder')
  args = ap.parse_args(argv)
  one = [a for a in ('ct', 'mask', 'sex') if getattr(args, a) is not None]
  if args.manifest:
    if one:
      ap.error(f'--manifest (batch) and --{one[0]} (one study) exclude each other')
  elif len(one) < 3 or args.labels is None:
    ap.error('one study needs --ct, --mask, --sex and --labels (or use --manifest)')
  return args


def print_report(report):
  if report.get('series'):
    p, s = report['series']['picked'], report['series']
    print(f'series: picked {os.path.normpath(os.path.join(report["ct"], p["folder"]))} (number '
          f'{p["series_number"] or "-"}, "{p["description"]}", {p["slices"]} slices, ImageType '
          f'{p["image_type"] or "absent"}), {s["candidates"]} series found')
    for o in s['others']:
      print(f'series: not {o["folder"]} ("{o["description"]}"): {", ".join(o["reasons"])}')
  cal = report['calibration']
  if cal['applied']:
    print(f'calibration: air {cal["air_hu"]:.1f} HU ({cal["air_voxels"]} voxels), fat '
          f'{cal["fat_hu"]:.1f} HU ({cal["fat_voxels"]}) -> HU\' = {cal["slope"]:.4f} x HU '
          f'{cal["intercept"]:+.2f}')
  print(f'{"level":6s} {"device":9s} {"BMD":>7s} {"T":>6s}  {"WHO":16s} {"P(op)":>6s}  QC')
  for v in report['vertebrae']:
    flags = ','.join(q['gate'] for q in v['qc']) or 'pass'
    for d, r in v['devices'].items():
      t = '   n/a' if r['t_score'] is None else f'{r["t_score"]:+6.2f}'
      print(f'{v["level"]:6s} {d:9s} {r["bmd"]:7.3f} {t}  {r["who_class"]:16s} '
            f'{r["p_osteoporosis"]:6.3f}  {flags}')
  for v in report['vertebrae']:
    for q in v['qc']:
      print(f'qc: {v["level"]} {q["gate"]}: {q["detail"]}')
  pat = report['patient']
  for d, r in pat['devices'].items():
    t = 'n/a' if r['t_score_min'] is None else f'{r["t_score_min"]:+.2f} ({r["level"]})'
    print(f'patient {d}: lowest T over {" ".join(pat["levels"]) or "no level"}: {t}, '
          f'{r["who_class"]}')
  for w in report['warnings']:
    print(f'warning: {w}')


def main(argv=None):
  args = parse_args(argv)
  model = predict.Model(args.checkpoint)
  if args.manifest:
    run = predict.run_batch(args.manifest, model, args.out, args.calibrate, args.labels or '',
                            args.phase)
    counts = {s: sum(e['status'] == s for e in run['studies']) for s in ('ok', 'skipped',
                                                                          'failed')}
    print(f'[predict] {counts["ok"]} ok, {counts["skipped"]} skipped, {counts["failed"]} failed: '
          f'{args.out}/ ({predict.VERTEBRA_CSV}, {predict.PATIENT_CSV}, {predict.RUN_RECORD})')
    return 1 if counts['failed'] else 0
  report, x = predict.predict_study(model, args.ct, args.mask, args.labels, args.sex,
                                    args.calibrate, args.phase)
  js, png = predict.write_report(report, x, args.out)
  print_report(report)
  print(f'report: {js}, {png}')
  return 0


if __name__ == '__main__':
  sys.exit(io.run_cli(main))
