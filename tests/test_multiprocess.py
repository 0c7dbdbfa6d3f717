"""Several processes for real: jax.distributed on localhost (gloo CPU collectives).

Two processes with 2 simulated devices each (launch/local_multiprocess.sh) must train exactly
as one process with 4: the same global batches (lib.host_indices), the same all-reduced
gradients, the same final parameters, and one writer of the workdir's reports.
"""
import os
import re
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _single(config: str, workdir: str, devices: int, *overrides: str):
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
  return subprocess.Popen([sys.executable, '-m', 'osteojax.main', '--config', config,
                           '--workdir', workdir, *overrides], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, encoding='utf-8',
                          errors='replace')


def _multi(n: int, config: str, workdir: str, *overrides: str, timeout_s: int = 120):
  env = dict(os.environ, PORT=str(_free_port()), DEVICES_PER_PROCESS='2',
             DISTRIBUTED_TIMEOUT_S=str(timeout_s))
  return subprocess.Popen([os.path.join(ROOT, 'launch', 'local_multiprocess.sh'), str(n),
                           config, workdir, *overrides], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, encoding='utf-8',
                          errors='replace')


def _wait(p, what, timeout=900):
  out, _ = p.communicate(timeout=timeout)
  assert p.returncode == 0, f'{what} failed:\n{out[-3000:]}'
  return out


def _losses(text: str) -> list[float]:
  return [float(v) for v in re.findall(r'step \d+/\d+ loss ([-\d.]+)', text)]


def _params(workdir):
  from osteojax.train import pretrained
  variables, step = pretrained.load_variables(workdir)
  return step, jax.tree_util.tree_leaves(variables['params'])


def test_aligner_two_processes_equal_one_process_of_four_devices(tmp_path):
  one, two = str(tmp_path / 'one'), str(tmp_path / 'two')
  data = f'--config.data.dir={tmp_path / "bodysim"}'
  extra = (data, '--config.steps=4', '--config.ckpt_every=2', '--config.log_every=1',
           '--config.eval_every=2')
  out1 = _wait(_single('configs/align.py:tiny', one, 4, *extra), '1 process x 4 devices')
  _wait(_multi(2, 'configs/align.py:tiny', two, *extra), '2 processes x 2 devices')
  logs = [open(os.path.join(two, f'process_{i}.log'), encoding='utf-8').read() for i in (0, 1)]
  assert 'on 4 device(s)' in out1 and all('on 4 device(s)' in t for t in logs)
  l1, l2 = _losses(out1), _losses(logs[0])
  assert len(l1) == 4 and l1 == _losses(logs[1])
  np.testing.assert_allclose(l2, l1, atol=1e-4)      # printed to 4 decimals
  s1, p1 = _params(one)
  s2, p2 = _params(two)
  assert s1 == s2 == 4
  for a, b in zip(p1, p2):
    np.testing.assert_allclose(a, b, atol=1e-5)
  # one writer: the evaluation ran once, in process 0
  assert os.path.exists(os.path.join(two, 'eval_test.json'))
  assert 'Aligner evaluation' not in logs[1] and 'R@1' in logs[0]


def test_a_process_that_never_comes_stops_the_other_with_a_message(tmp_path):
  """NUM_PROCESSES=2 but only process 0 starts: it gives up after DISTRIBUTED_TIMEOUT_S with
  the coordination service's DEADLINE_EXCEEDED (an abort inside jaxlib, so no Python line of
  ours can follow it; the line before says who was waiting for whom), not hang."""
  env = dict(os.environ, COORDINATOR=f'127.0.0.1:{_free_port()}', NUM_PROCESSES='2',
             PROCESS_ID='0', JAX_PLATFORMS='cpu', DISTRIBUTED_TIMEOUT_S='10')
  p = subprocess.run([sys.executable, '-m', 'osteojax.main', '--config', 'configs/align.py:tiny',
                      '--workdir', str(tmp_path / 'w'), '--multihost'], cwd=ROOT, env=env,
                     capture_output=True, encoding='utf-8', errors='replace', timeout=180)
  assert p.returncode != 0
  err = p.stdout + p.stderr
  assert 'process 0 of 2 meeting at' in err and 'DEADLINE_EXCEEDED' in err, err[-2000:]
  assert not os.path.exists(tmp_path / 'w' / 'checkpoints')
