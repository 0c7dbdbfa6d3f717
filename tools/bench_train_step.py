"""Benchmark the TP-SwAV train step: slim and full ResNet34-3D, at the CPU default and the
paper's input size. Prints one JSON line.

  python tools/bench_train_step.py [--sizes 32 64] [--batch 8] [--steps 3]

Each entry: step time (s, median of --steps warm steps; the two compiling warm-up calls are
excluded and reported as first_step_s), and
examples/s (vertebrae per second; each vertebra gives two views through the encoder).
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
from osteojax.train import lib  # noqa: E402


def bench(widths, size, batch, steps):
  config = tp_swav.get_config()
  config.model.widths = widths
  config.batch_size = batch
  model = pretrain.build_model(config)
  optim = pretrain.optimizer_config(config, 10)
  state = pretrain.init_state(config, model, (size,) * 3, optim, 100)
  n_params = sum(x.size for x in jax.tree_util.tree_leaves(state.params))
  p_state = flax.jax_utils.replicate(state)
  step = lib.make_train_step(pretrain.make_loss_fn(config, model),
                             post_update=pretrain.post_update)
  data = np.random.default_rng(0).random((batch, 5) + (size,) * 3).astype(np.float32)
  batch_ = lib.shard({'pool': data})
  t = time.perf_counter()
  for _ in range(2):   # the second call compiles again (donated, committed buffers)
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
  return dict(widths=list(widths), params_m=round(n_params / 1e6, 2), input=size, batch=batch,
              first_step_s=round(first, 2), step_s=round(st, 3),
              examples_per_s=round(batch / st, 2))


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--sizes', type=int, nargs='+', default=[32, 64])
  ap.add_argument('--batch', type=int, default=8)
  ap.add_argument('--steps', type=int, default=3)
  a = ap.parse_args()
  runs = [bench(w, s, a.batch, a.steps) for s in a.sizes
          for w in ((16, 32, 64, 128), (64, 128, 256, 512))]
  print(json.dumps(dict(runs=runs, devices=jax.device_count(),
                        backend=jax.default_backend(),
                        machine=f'{platform.machine()}, {os.cpu_count()} cpus')))


if __name__ == '__main__':
  main()
