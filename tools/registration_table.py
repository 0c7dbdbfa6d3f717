"""Table 1 analog and annotation-transfer Dice table on BodySim with a trained aligner.

  python tools/registration_table.py --aligner runs/align --out results/registration
  python tools/registration_table.py --aligner runs/align --out results/registration \
      --unet-seeds 0 1          # Dice table over two U-Net seeds

Stages (all on generated BodySim data, the aligner's own data set):
1. Lowe's ratio of the salient method (of 0.8, 0.9, 0.95, 0.98, 0.99, 1.0) and the MI channel pair (MRI
   fat / water vs DXA bone / tissue), each the one with the lowest mean keypoint error on the
   first 20 training pairs.
2. Refinement regressor: by default the paper's, at image resolution (configs/refine.py:image:
   the MRI image beside the DXA image warped onto it), trained on the first 50 training pairs
   through their true alignment (pairs known to be aligned), perturbed copies drawn on the fly;
   --refiner maps: on feature maps, trained on the pairs the salient method aligns.
3. Table 1 analog on the test split (100 pairs): keypoint transfer error (cm) per method for
   hip joints, S1, shoulder joints, median and mean +- sd over all; seconds per pair on this
   machine (registration only; encoding both scans is timed apart); where the aligner's
   correlation places each MRI map (placement_check) and how distinct its single cells are
   (cell_match_check, what the salient method rests on). -> table1.json / .md, overlays.png
   (Fig. 5-like).
4. Annotation transfer: every method runs on the U-Net training subjects; the one with the
   lowest mean keypoint error there (identity and the keypoint floor excluded) moves their DXA
   masks onto their MRIs. U-Nets (configs/unet.py) train on MRI with (a) those masks, (b) the
   true MRI masks, (c) masks moved by the identity; Dice per class against the true MRI masks
   of the test subjects. -> dice.json / .md (skipped with --unet-seeds none).
5. Timings at the paper's resolution and at the CPU default's (tools/bench_registration.py on
   --bench-pairs generated pairs per scale, this aligner) -> bench_registration.json
   (skipped with --bench-pairs 0).
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import shutil
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'configs'))
sys.path.insert(0, os.path.join(ROOT, 'tools'))

import bench_registration  # noqa: E402
import refine as refine_config  # noqa: E402
import unet as unet_config  # noqa: E402

from osteojax.align import segment  # noqa: E402
from osteojax.align import bodysim_registration as br  # noqa: E402
from osteojax.align import registration_eval  # noqa: E402
from osteojax.align import encoders, pairs, register  # noqa: E402
from osteojax.data import io  # noqa: E402
from osteojax.data.io import OsteoDataError, run_cli  # noqa: E402

GENERATED = ('generated BodySim pairs (osteojax/data/bodysim.py), not real scans')
EXCLUDED_FROM_BEST = ('identity', 'floor')


def _load(acfg, split, limit, data_dir):
  data = pairs.load(acfg, split, limit, data_dir)
  try:
    br.known_alignments(data)
  except ValueError as e:
    raise OsteoDataError(acfg.data.get('manifest') or data_dir, str(e)) from None
  return data


def _dice_markdown(results: dict) -> str:
  labels = [segment.LABELS[k] for k in sorted(segment.LABELS) if k] + ['mean_foreground']
  lines = ['| Training masks | seed | ' + ' | '.join(labels) + ' |',
           '|' + '---|' * (len(labels) + 2)]
  for variant, per_seed in results.items():
    for seed, r in per_seed.items():
      cells = [f"{r['dice'][k]['mean']:.3f} ± {r['dice'][k]['sd']:.3f}" for k in labels]
      lines.append(f'| {variant} | {seed} | ' + ' | '.join(cells) + ' |')
    if len(per_seed) > 1:
      cells = []
      for k in labels:
        v = np.array([r['dice'][k]['mean'] for r in per_seed.values()])
        cells.append(f'{v.mean():.3f} (sd over seeds {v.std():.3f})')
      lines.append(f'| {variant} | all | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--aligner', required=True, help='aligner run folder (config.json + ckpts)')
  ap.add_argument('--out', required=True)
  ap.add_argument('--test-pairs', type=int, default=100)
  ap.add_argument('--salient-max-angle', type=float,
                  default=float(np.rad2deg(max(register.DEFAULT_ANGLES))),
                  help='degrees: RANSAC/LMedS of the salient method consider rotations up to '
                       'this (default: the dense method\'s search range, 10); negative: any')
  ap.add_argument('--refine-pairs', type=int, default=50)
  ap.add_argument('--refine-steps', type=int, default=None, help='default: configs/refine.py')
  ap.add_argument('--refiner', choices=('image', 'maps'), default='image',
                  help="image: the paper's refiner (MRI image beside the warped DXA image, "
                       "trained on training pairs through their true alignment, "
                       "configs/refine.py:image); maps: on feature maps, trained on "
                       "salient-aligned pairs (configs/refine.py)")
  ap.add_argument('--refine-min-inliers', type=int, default=10,
                  help='LMedS inliers a salient-aligned training pair needs to be kept')
  ap.add_argument('--mi-pairs', type=int, default=20,
                  help="training pairs that choose the MI channels and the salient method's ratio")
  ap.add_argument('--unet-train', type=int, default=200, help='U-Net training subjects')
  ap.add_argument('--unet-steps', type=int, default=None, help='default: configs/unet.py')
  ap.add_argument('--unet-seeds', nargs='+', default=['0'],
                  help="U-Net seeds, or 'none' to skip the Dice table")
  ap.add_argument('--overlay-pairs', type=int, default=3)
  ap.add_argument('--data', default=None,
                  help="a BodySim folder instead of the aligner's own data (BodySim or manifest)")
  ap.add_argument('--bench-pairs', type=int, default=10,
                  help='timed pairs per scale for bench_registration.json (0: skip)')
  args = ap.parse_args(argv)
  t_start = time.time()
  model, variables, acfg, step = encoders.load_encoders(args.aligner)
  if acfg.model.encoder != 'spatial':
    raise OsteoDataError(args.aligner, f'registration needs spatial maps; this aligner is '
                                       f'{acfg.model.encoder!r}')
  ddir = args.data or pairs.ensure_data(acfg, progress=False)
  manifest = bool(acfg.data.get('manifest')) and not args.data
  os.makedirs(args.out, exist_ok=True)
  for sub in ('refiner', 'unet'):     # runs of an earlier call would be resumed, not redone
    shutil.rmtree(os.path.join(args.out, sub), ignore_errors=True)
  n_train = max(args.unet_train, 2 * args.refine_pairs, args.mi_pairs)
  train = _load(acfg, 'train', n_train, args.data)
  test = _load(acfg, 'test', args.test_pairs, args.data)
  source = f'the pairs of {ddir}' if manifest else GENERATED
  spacing = train['spacing_mm']
  print(f'[registration] aligner {args.aligner} step {step}; {len(train["dxa"])} training, '
        f'{len(test["dxa"])} test pairs from {ddir}', flush=True)

  fd_tr, fm_tr = br.embed_pairs(model, variables, acfg, train)
  t0 = time.perf_counter()
  fd_te, fm_te = br.embed_pairs(model, variables, acfg, test)
  encode_s = (time.perf_counter() - t0) / len(test['dxa'])

  # 1. Lowe's ratio of the salient method and the MI channels, chosen on training pairs
  tr_pairs = br.make_pairs(train, fd_tr, fm_tr)
  prior = dict(max_angle_deg=args.salient_max_angle if args.salient_max_angle >= 0 else None)
  ratio, ratio_scores = br.choose_salient_ratio(tr_pairs[:args.mi_pairs], spacing,
                                                stride=encoders.stride(acfg), **prior)
  salient_kw = dict(ratio=ratio, **prior)
  print(f'[registration] salient ratio {ratio} (training mean cm {ratio_scores})', flush=True)
  mi_channels, mi_scores = br.choose_mi_channels(tr_pairs[:args.mi_pairs], spacing)
  print(f'[registration] MI channels {mi_channels} (training mean cm {mi_scores})', flush=True)

  # 2. refinement regressor: on images through the true alignment, or on salient-aligned maps
  rcfg = refine_config.get_config('image' if args.refiner == 'image' else None)
  if args.refine_steps:
    rcfg.steps = args.refine_steps
  rdir = os.path.join(args.out, 'refiner')
  tried = 2 * args.refine_pairs
  norm = acfg.data.get('normalise', 'none')
  try:
    if args.refiner == 'image':
      refine_fn, refine_info = br.train_image_refiner(rcfg, rdir, train, args.refine_pairs,
                                                      norm)
    else:
      refine_fn, refine_info = br.train_refiner(rcfg, rdir, fm_tr[:tried], fd_tr[:tried],
                                                args.refine_pairs, args.refine_min_inliers,
                                                salient_kw)
  except ValueError as e:      # too few salient-aligned pairs: no refinement row
    refine_fn, refine_info = None, dict(trained=False, reason=str(e))
  print(f'[registration] refiner: {refine_info}', flush=True)

  # 3. Table 1 analog
  failures = collections.Counter()
  methods = br.method_table(spacing, refine_fn, mi_channels, failures, salient_kw=salient_kw,
                            stride=encoders.stride(acfg), refine_on=args.refiner,
                            normalise=norm)
  te_pairs = br.make_pairs(test, fd_te, fm_te)
  truths = [p.extra['truth'] for p in te_pairs]
  placement = br.placement_check(fd_te, fm_te, truths, encoders.stride(acfg))
  print(f'[registration] aligner placement on the test pairs: {placement}', flush=True)
  cells = br.cell_match_check(fd_te, fm_te, truths, encoders.stride(acfg))
  print(f'[registration] single cells on the test pairs: {cells}', flush=True)
  errors, seconds, transforms = registration_eval.run_methods(te_pairs, methods, spacing)
  rows = registration_eval.keypoint_table(errors, seconds)
  test_failures = dict(failures)
  table = dict(
      data=source, data_dir=ddir, split='test', pairs=len(te_pairs), spacing_mm=spacing,
      aligner=dict(workdir=args.aligner, step=int(step), config=acfg.to_dict()),
      encode_seconds_per_pair=encode_s, refiner=refine_info, aligner_placement=placement,
      aligner_cells=cells,
      mi_channels=dict(mri=mi_channels[0], dxa=mi_channels[1], training_mean_cm=mi_scores),
      salient_ratio=dict(ratio=ratio, max_angle_deg=prior['max_angle_deg'], training_mean_cm={str(k): v for k, v in ratio_scores.items()}),
      failures_fell_back_to_identity=test_failures, rows=rows,
      per_pair_errors_cm={k: np.round(v, 4).tolist() for k, v in errors.items()},
      keypoints=list(registration_eval.KEYPOINTS), machine=platform.machine(), cpus=os.cpu_count(),
      load_avg_1min=os.getloadavg()[0])
  md = registration_eval.table_markdown(rows)
  io.atomic_write_text(os.path.join(args.out, 'table1.json'), json.dumps(table, indent=1))
  io.atomic_write_text(
      os.path.join(args.out, 'table1.md'),
      f'Keypoint transfer error (cm) on {len(te_pairs)} test pairs of {source}; '
      f'aligner {args.aligner} (step {step}); mean ± sd, seconds per pair of the '
      f'registration on this CPU (encoding both scans: {encode_s:.3f} s per pair).\n\n'
      + md + '\n\nPlacement on the test pairs, ' + br.placement_sentence(placement)
      + '\n\nSingle cells on the test pairs, ' + br.cell_match_sentence(cells) + '\n')
  registration_eval.overlay_figure(os.path.join(args.out, 'overlays.png'), te_pairs,
                            {k: v for k, v in transforms.items() if k != 'identity'},
                            args.overlay_pairs)
  print(md, flush=True)

  # 4. annotation transfer
  if args.unet_seeds != ['none'] and not (train['mri_mask'].any() and test['mri_mask'].any()):
    raise OsteoDataError(ddir, 'the Dice table needs dxa_mask and mri_mask for the training and '
                               'test subjects; pass --unet-seeds none to skip it')
  if args.unet_seeds != ['none']:
    n_u = args.unet_train
    u_pairs = tr_pairs[:n_u]
    failures.clear()
    u_err, _, u_tf = registration_eval.run_methods(u_pairs, methods, spacing, warmup=False)
    means = {k: float(np.mean(v)) for k, v in u_err.items()}
    best = min((k for k in means if k not in EXCLUDED_FROM_BEST), key=means.get)
    mri_hw = train['mri'].shape[1:3]
    masks = {
        f'transferred ({best})': br.transfer_masks(train['dxa_mask'][:n_u], u_tf[best], mri_hw),
        'true MRI masks (upper bound)': train['mri_mask'][:n_u].astype(np.int32),
        'identity (lower bound)': br.transfer_masks(train['dxa_mask'][:n_u],
                                                    u_tf['identity'], mri_hw),
    }
    mri_tr = np.ascontiguousarray(train['mri'][:n_u])
    test_seg = segment.SegData(np.ascontiguousarray(test['mri']),
                               test['mri_mask'].astype(np.int32))
    results = {}
    for name, m in masks.items():
      results[name] = {}
      for seed in args.unet_seeds:
        ucfg = unet_config.get_config()
        ucfg.seed = int(seed)
        ucfg.data.source = 'arrays'
        if args.unet_steps:
          ucfg.steps = args.unet_steps
        tag = name.split(' ')[0]
        res, _ = segment.train_and_evaluate(
            ucfg, os.path.join(args.out, 'unet', f'{tag}_seed{seed}'),
            segment.SegData(mri_tr, m), test_seg)
        results[name][seed] = res
    mask_dice = {k: segment.dice_table(m, train['mri_mask'][:n_u], 4)
                 for k, m in masks.items()}
    dice = dict(data=source, train_subjects=n_u, test_subjects=len(test_seg.images),
                best_method=best, training_subject_mean_error_cm=means,
                transferred_mask_dice_vs_true_training_masks=mask_dice,
                unet_config=unet_config.get_config().to_dict(), results=results)
    io.atomic_write_text(os.path.join(args.out, 'dice.json'), json.dumps(dice, indent=1))
    dmd = _dice_markdown(results)
    io.atomic_write_text(
        os.path.join(args.out, 'dice.md'),
        f'U-Net Dice (mean ± sd over {len(test_seg.images)} test MRIs, true MRI masks) '
        f'of {source}; trained on {n_u} training MRIs with the masks named; '
        f'transfer method {best} (lowest mean keypoint error on the training subjects, '
        f'{means[best]:.2f} cm).\n\n' + dmd + '\n')
    print(dmd, flush=True)

  # 5. timings at the paper's resolution
  if args.bench_pairs:
    bench = bench_registration.report(bench_registration.bodysim_args(
        args.aligner, pairs=args.bench_pairs, salient_ratio=ratio))
    io.atomic_write_text(os.path.join(args.out, 'bench_registration.json'),
                         json.dumps(bench, indent=1))
    for run in bench['runs']:
      print(f'[registration] scale {run["scale"]} seconds per pair (median): '
            + ', '.join(f'{k} {v["median_s"]:.3f}' for k, v in run['results'].items()),
            flush=True)
  print(f'[registration] done in {time.time() - t_start:.0f} s -> {args.out}', flush=True)


if __name__ == '__main__':
  sys.exit(run_cli(main))
