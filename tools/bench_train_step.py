"""Benchmark the TP-SwAV train step: slim and full ResNet34-3D (3-D Swin-T, ViT and nnFormer's
encoder with --encoders swin3d vit3d nnformer3d), at the CPU default and the paper's input size.
Prints one JSON line.

  python tools/bench_train_step.py [--sizes 32 64] [--batch 8] [--steps 3] [--conv lax im2col]
                                   [--widths slim|full|both]
                                   [--encoders resnet3d swin3d vit3d nnformer3d]

Each entry: step time (s, median of --steps warm steps; the two warm-up calls, the first of
which compiles, are excluded and reported as first_step_s), and
examples/s (vertebrae per second; each vertebra gives two views through the encoder), for each
convolution implementation (models/resnet3d.Conv3D: 'lax' is XLA's convolution, the reference;
'im2col' the matrix-product / space-to-depth form, 'auto' picks per backend), with each one's
speed-up over 'lax' at the same widths and size (measured in this run). Swin-T, ViT and
nnFormer have no convolution choice; 'slim' is each one's CPU variant (configs/tp_swav.py),
'full' its paper size (Swin-UNETR's encoder, ViT-B, nnFormer's `:paper` encoder); with
resnet3d in --encoders, each gets speed_vs_resnet3d: the ResNet's (fastest convolution) step
time over its own, same widths class and input, in this run.
"""
import argparse
import json
import os
import platform
import sys
import time

import flax
import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'configs'))

import tp_swav  # noqa: E402

from osteojax.diagnosis import pretrain  # noqa: E402
from osteojax.models import resnet3d  # noqa: E402
from osteojax.train import lib  # noqa: E402


def bench(widths, size, batch, steps, conv='auto', encoder='resnet3d'):
  config = tp_swav.get_config()
  if widths == 'full':
    config.model = tp_swav.encoder_config('paper')
  config.model.name = encoder
  if encoder == 'resnet3d':
    config.model.widths = widths
    config.model.conv = conv
  config.batch_size = batch
  model = pretrain.build_model(config)
  optim = pretrain.optimizer_config(config, 10)
  state = pretrain.init_state(config, model, (size,) * 3, optim, 100)
  n_params = sum(x.size for x in jax.tree_util.tree_leaves(state.params))
  p_state = lib.replicate(state)
  step = lib.make_train_step(pretrain.make_loss_fn(config, model),
                             post_update=pretrain.post_update)
  data = np.random.default_rng(0).random((batch, 5) + (size,) * 3).astype(np.float32)
  batch_ = lib.shard({'pool': data})
  t = time.perf_counter()
  for _ in range(2):   # the first call compiles (lib.replicate: the second does not)
    p_state, m = step(p_state, batch_, jax.random.PRNGKey(0))
    jax.block_until_ready(m)
  first = time.perf_counter() - t
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    p_state, m = step(p_state, batch_, jax.random.PRNGKey(0))
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t)
  st = float(np.median(times))
  size_of = (dict(conv=conv, widths=list(widths)) if encoder == 'resnet3d' else
             dict(encoder=encoder, widths=widths))
  return dict(**size_of, params_m=round(n_params / 1e6, 2), input=size,
              batch=batch, first_step_s=round(first, 2), step_s=round(st, 3),
              examples_per_s=round(batch / st, 2))


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--sizes', type=int, nargs='+', default=[32, 64])
  ap.add_argument('--batch', type=int, default=8)
  ap.add_argument('--steps', type=int, default=3)
  ap.add_argument('--conv', nargs='+', default=['lax', 'im2col'],
                  choices=resnet3d.CONV_IMPLS)
  ap.add_argument('--widths', choices=('slim', 'full', 'both'), default='both')
  ap.add_argument('--encoders', nargs='+', default=['resnet3d'],
                  choices=('resnet3d', 'swin3d', 'vit3d', 'nnformer3d'))
  a = ap.parse_args()
  widths = dict(slim=[(16, 32, 64, 128)], full=[(64, 128, 256, 512)])
  widths['both'] = widths['slim'] + widths['full']
  runs = []
  for s in a.sizes:
    resnet = {}         # widths name -> the ResNet's best step time here, the other encoders' reference
    for name, w in zip(['slim', 'full'] if a.widths == 'both' else [a.widths], widths[a.widths]):
      if 'resnet3d' not in a.encoders:
        break
      ref = None
      for conv in a.conv:
        r = dict(encoder='resnet3d', **bench(w, s, a.batch, a.steps, conv))
        if conv == 'lax':
          ref = r['step_s']
        if ref is not None and conv != 'lax':
          r['speedup_vs_lax'] = round(ref / r['step_s'], 2)
        resnet[name] = min(resnet.get(name, r['step_s']), r['step_s'])
        print(json.dumps(r), file=sys.stderr, flush=True)      # progress
        runs.append(r)
    for enc in [e for e in a.encoders if e != 'resnet3d']:
      for w in (['slim', 'full'] if a.widths == 'both' else [a.widths]):
        r = bench(w, s, a.batch, a.steps, encoder=enc)
        if w in resnet:   # > 1: faster than the ResNet34-3D of the same size class, same input
          r['speed_vs_resnet3d'] = round(resnet[w] / r['step_s'], 2)
        print(json.dumps(r), file=sys.stderr, flush=True)      # progress
        runs.append(r)
  print(json.dumps(dict(runs=runs, devices=jax.device_count(),
                        backend=jax.default_backend(),
                        machine=f'{platform.machine()}, {os.cpu_count()} cpus')))


if __name__ == '__main__':
  main()
