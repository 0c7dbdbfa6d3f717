"""Benchmark: all-pairs max-over-translations similarity, FFT vs direct lax.conv vs a pair loop.

Prints one JSON line. For each case (the paper's shapes at N = 10: DXA map 100 x 37 x 128, MRI
map 62 x 28 x 128; and the same maps at N = 32) the N x N similarity matrix is computed by
  fft:    osteojax.align.correlation.similarity_matrix(method='fft'), jitted;
  direct: one lax.conv_general_dilated over all pairs (MRI maps as kernels), jitted;
  loop:   a Python loop over the N x N pairs calling a jitted single-pair lax.conv;
fft and direct timed as the best of --repeats runs after a compiling warm-up call, the loop as
one pass after compiling the single-pair function (compile always excluded), on unit-norm
random maps. max_abs_diff compares fft and loop with direct (values are in [-1, 1]).

The process keeps freed memory (osteojax.train.hostmem.keep_freed_memory, for every method
alike) unless --default-malloc is given; the JSON says which.

  python tools/bench_correlation.py [--repeats 10] [--sizes 10,32] [--skip-loop-above 32]
                                    [--default-malloc]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from osteojax.align import correlation  # noqa: E402
from osteojax.train import hostmem  # noqa: E402

DXA_MAP = (100, 37, 128)    # 800 x 300 DXA / 8
MRI_MAP = (62, 28, 128)     # 501 x 224 MRI / 8


def _best(fn, repeats):
  out = jax.block_until_ready(fn())       # compile + warm-up
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return min(times), out


def bench_case(n, repeats, loop=True, seed=0):
  k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
  unit = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)
  a = unit(jax.random.normal(k1, (n,) + DXA_MAP, jnp.float32))
  b = unit(jax.random.normal(k2, (n,) + MRI_MAP, jnp.float32))
  fft = jax.jit(lambda x, y: correlation.similarity_matrix(x, y, 'fft'))
  direct = jax.jit(lambda x, y: correlation.similarity_matrix(x, y, 'direct'))
  t_fft, s_fft = _best(lambda: fft(a, b), repeats)
  t_dir, s_dir = _best(lambda: direct(a, b), repeats)
  res = dict(n=n, dxa_map=list(DXA_MAP), mri_map=list(MRI_MAP), fft_s=t_fft, direct_s=t_dir,
             speedup_fft_vs_direct=t_dir / t_fft,
             max_abs_diff_fft_vs_direct=float(jnp.max(jnp.abs(s_fft - s_dir))))
  if loop:
    jax.block_until_ready(correlation.pair_similarity(a[0], b[0]))   # compile one pair
    t = time.perf_counter()                                           # then one timed pass
    s_loop = jax.block_until_ready(correlation.similarity_matrix_loop(a, b))
    t_loop = time.perf_counter() - t
    res.update(loop_s=t_loop, speedup_fft_vs_loop=t_loop / t_fft,
               max_abs_diff_loop_vs_direct=float(jnp.max(jnp.abs(s_loop - s_dir))))
  return res


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--repeats', type=int, default=10, help='timed runs (best is kept)')
  p.add_argument('--sizes', default='10,32')
  p.add_argument('--skip-loop-above', type=int, default=32,
                 help='no per-pair loop for N above this (N^2 calls)')
  p.add_argument('--default-malloc', action='store_true',
                 help='leave the C allocator as it is (returns freed blocks to the OS)')
  args = p.parse_args(argv)
  kept = False if args.default_malloc else hostmem.keep_freed_memory()
  cases = [bench_case(int(n), args.repeats, int(n) <= args.skip_loop_above)
           for n in args.sizes.split(',')]
  print(json.dumps(dict(bench='correlation', backend=jax.default_backend(),
                        devices=[str(d) for d in jax.devices()], cpu_count=os.cpu_count(),
                        machine=platform.machine(), jax=jax.__version__,
                        load_average_1_5_15=list(os.getloadavg()),
                        keep_freed_memory=kept, repeats=args.repeats, cases=cases)))


if __name__ == '__main__':
  main()
