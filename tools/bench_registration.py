"""Benchmark the registration methods at the paper's sizes. Prints one JSON line.

  python tools/bench_registration.py [--pairs 5] [--seed 0]

Feature maps: MRI (source) 62 x 28 x 128 and DXA (target) 100 x 37 x 128, generated with a
known transform (osteojax.align.synthetic; not encoder output). Methods: dense (11 angles,
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


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--pairs', type=int, default=5)
  ap.add_argument('--seed', type=int, default=0)
  ap.add_argument('--noise', type=float, default=0.5, help='source map noise (x field sd)')
  ap.add_argument('--skip-mi', action='store_true')
  args = ap.parse_args(argv)
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

  print(json.dumps(dict(
      bench='registration', data='generated (osteojax.align.synthetic), not encoder maps',
      mri_map=MRI_MAP + (128,), dxa_map=DXA_MAP + (128,), mri_image=MRI_IMG, dxa_image=DXA_IMG,
      pairs=args.pairs, seed=args.seed, noise=args.noise,
      device=str(jax.devices()[0]), jax=jax.__version__, cpus=os.cpu_count(),
      machine=platform.machine(), load_avg_1min=os.getloadavg()[0], results=res)))


if __name__ == '__main__':
  main()
