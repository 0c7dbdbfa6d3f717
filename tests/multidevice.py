"""Run a tests/pmap_*.py script under several simulated device counts, concurrently.

XLA_FLAGS=--xla_force_host_platform_device_count=N must be set before jax is imported, so each
count is its own subprocess; they start together (the tiny steps are mostly single-threaded, so
two of them share a 2-core machine well). Each script prints one JSON line last.
"""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(script: str, *args: str, counts=(1, 4), timeout: float = 600) -> list[dict]:
  """[parsed last stdout line of tests/<script> with N simulated devices for N in counts]."""
  procs = []
  for n in counts:
    env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS=f'--xla_force_host_platform_device_count={n}')
    procs.append(subprocess.Popen([sys.executable, os.path.join(ROOT, 'tests', script), *args],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  encoding='utf-8', errors='replace', env=env))
  out = []
  try:
    for n, p in zip(counts, procs):
      stdout, stderr = p.communicate(timeout=timeout)
      assert p.returncode == 0, f'{script} {" ".join(args)} on {n} device(s):\n{stderr[-3000:]}'
      res = json.loads(stdout.strip().splitlines()[-1])
      assert res['devices'] == n, res
      out.append(res)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  return out
