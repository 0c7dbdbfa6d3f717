"""Benchmark the registration methods at the paper's sizes. Prints one JSON line.

  python tools/bench_registration.py --aligner runs/align [--pairs 10] [--scales 1 4]
  python tools/bench_registration.py --data synthetic [--pairs 5] [--seed 0]

--data bodysim (default): generated BodySim pairs at each of --scales (1 = the paper's
resolution: DXA 800 x 300, MRI 501 x 224 at 2.2 mm, maps 100 x 37 and 62 x 28; 4 = the CPU
default the aligner is trained at). Maps come from the --aligner checkpoint (its encoders are
fully convolutional and run at any size, but they were trained at their own scale only: at
another scale the timings hold, the errors do not), or from an untrained encoder of the CPU
default architecture without --aligner. Timed per pair: encoding both scans, dense, salient,
the refinement regressor (configs/refine.py model, untrained: its run time does not depend on
its weights) after salient, and SimpleITK Mattes MI on the images (MRI water vs DXA tissue);
keypoint transfer errors (cm) against the BodySim truth are reported beside the times.

--data synthetic: feature maps: MRI (source) 62 x 28 x 128 and DXA (target) 100 x 37 x 128,
generated with a known transform (osteojax.align.synthetic; not encoder output). Methods: dense (11 angles,
-10..10 degrees), salient points, the refinement regressor (the `:paper` model of
configs/refine.py, untrained: its run time does not depend on its weights) and salient +
refine; SimpleITK Mattes MI on generated single-channel images of 501 x 224 (MRI) and
800 x 300 (DXA) pixels at 2.2 mm. Per method: seconds per pair (median, min, max over --pairs
pairs; the first, compiling call is excluded and reported as first_call_s) and, for dense,
salient and MI, the mean error on these generated pairs (map cells, or pixels for MI).
"""
import argparse
import json
import os
import platform
import sys
import time

import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'configs'))

import refine as refine_config  # noqa: E402

from osteojax.align import mi, refine, register, synthetic  # noqa: E402

MRI_MAP, DXA_MAP = (62, 28), (100, 37)
MRI_IMG, DXA_IMG = (501, 224), (800, 300)


def _timed(f):
  t = time.perf_counter()
  out = f()
  return out, time.perf_counter() - t


def _summary(times, first, errors=None, unit=None):
  out = dict(median_s=float(np.median(times)), min_s=float(np.min(times)),
             max_s=float(np.max(times)), first_call_s=float(first), n=len(times))
  if errors is not None:
    out.update({f'mean_error_{unit}': float(np.mean(errors)),
                f'max_error_{unit}': float(np.max(errors))})
  return out


def bench_synthetic(args):
  rng = np.random.default_rng(args.seed)
  pairs = []
  for i in range(args.pairs + 1):            # pair 0 warms up (compiles)
    t = synthetic.random_transform(rng, MRI_MAP, DXA_MAP, np.deg2rad(8.0), margin=2.0)
    s, g = synthetic.make_pair(MRI_MAP, DXA_MAP, t, 128, 2.0, args.noise,
                               seed=args.seed * 1000 + i)
    pairs.append((s, g, t))

  config = refine_config.get_config('paper')
  model = refine.build_model(config)
  state = refine.init_state(config, model, MRI_MAP + (128,), 1)
  refine_fn = refine.make_refine_fn(model, {'params': state.params,
                                            'batch_stats': state.batch_stats}, config)
  res = {}
  methods = {
      'dense': lambda s, g: register.dense(s, g).transform,
      'salient': lambda s, g: register.salient(s, g).transform,
      'refine': lambda s, g: refine.refine(refine_fn, s, g, register.identity()),
      'salient_plus_refine': lambda s, g: refine.refine(refine_fn, s, g,
                                                        register.salient(s, g).transform),
  }
  for name, f in methods.items():
    times, errors = [], []
    first = None
    for k, (s, g, t) in enumerate(pairs):
      est, dt = _timed(lambda: f(s, g))
      if k == 0:
        first = dt
        continue
      times.append(dt)
      errors.append(register.mean_grid_error(est, t, MRI_MAP))
    keep_err = name in ('dense', 'salient')
    res[name] = _summary(times, first, errors if keep_err else None, 'cells')

  if not args.skip_mi:
    times, errors = [], []
    first = None
    for k in range(args.pairs + 1):
      t = synthetic.random_transform(rng, MRI_IMG, DXA_IMG, np.deg2rad(8.0), margin=10.0)
      src, tgt = synthetic.make_image_pair(MRI_IMG, DXA_IMG, t, 2.2, blobs_n=80,
                                           seed=args.seed * 1000 + k, sigma=(8.0, 30.0))
      out, dt = _timed(lambda: mi.register_mi(src, tgt, 2.2, init='geometry', seed=k))
      if k == 0:
        first = dt
        continue
      times.append(dt)
      y, x = np.mgrid[0:MRI_IMG[0]:8, 0:MRI_IMG[1]:8]
      pts = np.stack([x.ravel(), y.ravel()], -1)
      errors.append(float(np.mean(np.linalg.norm(out.transform_px.apply(pts) - t.apply(pts),
                                                 axis=-1))))
    res['mattes_mi'] = _summary(times, first, errors, 'px')

  return dict(data='generated (osteojax.align.synthetic), not encoder maps',
              mri_map=MRI_MAP + (128,), dxa_map=DXA_MAP + (128,), mri_image=MRI_IMG,
              dxa_image=DXA_IMG, noise=args.noise, results=res)


def bench_bodysim(args, scale):
  """Times and keypoint errors of every method on generated BodySim pairs at `scale`."""
  from osteojax.align import bodysim_registration as br
  from osteojax.align import registration_eval
  from osteojax.align import encoders, pairs
  from osteojax.align import train as align_train
  from osteojax.data import bodysim

  if args.aligner:
    model, variables, acfg, step = encoders.load_encoders(args.aligner)
    trained_scale = int(acfg.data.scale)
    if int(acfg.data.scale) != int(scale):
      # the encoder as 'auto' scales it for this spacing (poolings hold no weights, so the
      # trained weights apply): at the paper's 2.2 mm, three poolings and its map sizes
      acfg = acfg.copy_and_resolve_references()
      acfg.data.scale, acfg.model.pools = int(scale), 'auto'
      model = encoders.build_model(acfg)
  else:
    import align as align_config
    acfg, step = align_config.get_config(), 0
    trained_scale = 0
    acfg.data.scale = int(scale)        # 'auto' poolings for this spacing
    model = encoders.build_model(acfg)
    g = bodysim.geometry(scale)
    st = align_train.init_state(acfg, model, tuple(g['dxa_shape']) + (2,),
                                tuple(g['mri_shape']) + (2,), 1)
    variables = {'params': st.params, 'batch_stats': st.batch_stats}
  subs = [bodysim.make_subject([args.seed, 7, i], scale) for i in range(args.pairs + 1)]
  keys = ('dxa', 'mri')
  data = {k: np.stack([s[k] for s in subs]) for k in keys}
  for k in ('keypoints_dxa', 'keypoints_mri', 'matrix_mri_to_dxa'):
    data[k] = np.array([s['truth'][k] for s in subs])
  data['ids'] = [str(i) for i in range(len(subs))]
  spacing = subs[0]['spacing_mm']
  dxa, mri = pairs.select_channels(data, acfg)
  fd_j = jax.jit(lambda x: model.apply(variables, x, method=model.embed_dxa))
  fm_j = jax.jit(lambda x: model.apply(variables, x, method=model.embed_mri))
  enc, fds, fms = [], [], []
  for i in range(len(subs)):
    t0 = time.perf_counter()
    a = np.asarray(fd_j(dxa[i:i + 1]))[0]
    b = np.asarray(fm_j(mri[i:i + 1]))[0]
    enc.append(time.perf_counter() - t0)
    fds.append(a)
    fms.append(b)
  pairs = br.make_pairs(data, np.stack(fds), np.stack(fms))
  rcfg = refine_config.get_config()
  rmodel = refine.build_model(rcfg)
  rst = refine.init_state(rcfg, rmodel, fms[0].shape, 1)
  refine_fn = refine.make_refine_fn(rmodel, {'params': rst.params,
                                             'batch_stats': rst.batch_stats}, rcfg)
  methods = br.method_table(spacing, refine_fn, ('water', 'tissue'),
                            salient_kw=dict(ratio=args.salient_ratio),
                            stride=encoders.stride(acfg))
  drop = ('identity', 'floor') + (('mattes_mi',) if args.skip_mi else ())
  methods = {k: v for k, v in methods.items() if k not in drop}
  res = {'encode_both': _summary(enc[1:], enc[0])}
  for name, f in methods.items():
    _, first = _timed(lambda: f(pairs[0]))        # pair 0 warms up (compiles)
    e, secs, _ = registration_eval.run_methods(pairs[1:], {name: f}, spacing, warmup=False)
    res[name] = _summary(secs[name], first)
    res[name]['mean_keypoint_error_cm'] = float(np.mean(e[name]))
  return dict(data=f'generated BodySim pairs at scale {scale}', scale=scale,
              spacing_mm=spacing, dxa_image=list(dxa.shape[1:3]), mri_image=list(mri.shape[1:3]),
              dxa_map=list(fds[0].shape), mri_map=list(fms[0].shape),
              encoder=dict(aligner=args.aligner or 'untrained CPU-default architecture',
                           step=int(step), trained_scale=trained_scale, pools=encoders.pools(acfg),
                           widths=list(acfg.model.widths)),
              results=res)


def parser() -> argparse.ArgumentParser:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--data', choices=('bodysim', 'synthetic'), default='bodysim')
  ap.add_argument('--aligner', default='', help='aligner run folder (bodysim data)')
  ap.add_argument('--scales', type=int, nargs='+', default=[1, 4])
  ap.add_argument('--pairs', type=int, default=5)
  ap.add_argument('--seed', type=int, default=0)
  ap.add_argument('--noise', type=float, default=0.5, help='source map noise (x field sd)')
  ap.add_argument('--skip-mi', action='store_true')
  ap.add_argument('--salient-ratio', type=float, default=0.9, help="Lowe's ratio (bodysim data)")
  return ap


def main(argv=None):
  args = parser().parse_args(argv)
  print(json.dumps(report(args)))


def report(args) -> dict:
  """The benchmark's JSON object for parsed arguments (also used by registration_table.py)."""
  if args.data == 'synthetic':
    out = bench_synthetic(args)
  else:
    out = dict(runs=[bench_bodysim(args, s) for s in args.scales])
  return dict(bench='registration', pairs=args.pairs, seed=args.seed, **out,
              device=str(jax.devices()[0]), jax=jax.__version__, cpus=os.cpu_count(),
              machine=platform.machine(), load_avg_1min=os.getloadavg()[0])


def bodysim_args(aligner: str, pairs: int = 10, salient_ratio: float = 0.9):
  """Arguments of a BodySim benchmark run, as the command line would give them."""
  return parser().parse_args(['--aligner', aligner, '--pairs', str(pairs),
                              '--salient-ratio', str(salient_ratio)])


if __name__ == '__main__':
  main()
