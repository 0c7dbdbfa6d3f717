"""End to end: `python -m osteojax.main --config configs/tp_swav.py:tiny` trains, writes
TensorBoard events and checkpoints, and after kill -9 resumes to the same final parameters as an
uninterrupted run."""
import glob
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cmd(workdir, data, task='tp_swav'):
  return [sys.executable, '-m', 'osteojax.main', '--config', f'{ROOT}/configs/{task}.py:tiny',
          '--workdir', str(workdir), f'--config.data.dir={data}', '--config.data.workers=1',
          '--config.epochs=3', '--config.ckpt_every=4']


def _env():
  return dict(os.environ, PYTHONPATH=ROOT)


def _final(workdir):
  mngr = ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, 'checkpoints')))
  step = mngr.latest_step()
  tree = mngr.restore(step, args=ocp.args.StandardRestore())
  return step, tree['params']


def test_train_kill_and_resume(tmp_path):
  data = tmp_path / 'data'
  # A run (that also builds the data set and texture pool) killed with SIGKILL once its first
  # checkpoint exists, then started again, beside an uninterrupted run of the same config.
  work = tmp_path / 'killed'
  proc = subprocess.Popen(_cmd(work, data), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          env=_env())
  deadline = time.time() + 600
  while time.time() < deadline and proc.poll() is None:
    if glob.glob(str(work / 'checkpoints' / '4')):
      break
    time.sleep(0.05)
  assert proc.poll() is None, 'the run ended before it could be killed'
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  runs = {name: subprocess.Popen(_cmd(w, data), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 encoding='utf-8', errors='replace', env=_env())
          for name, w in (('ref', tmp_path / 'ref'), ('again', work))}
  out = {name: p.communicate(timeout=900) + (p.returncode,) for name, p in runs.items()}
  for name, (stdout, stderr, rc) in out.items():
    assert rc == 0, f'{name}: {stderr[-3000:]}'
  ref_out, again_out = out['ref'][0], out['again'][0]
  assert 'step' in ref_out and 'ETA' in ref_out
  assert glob.glob(str(tmp_path / 'ref' / 'events.out.tfevents.*'))
  assert (tmp_path / 'ref' / 'config.json').exists()
  assert 'resumed from step' in again_out and 'resumed from step' not in ref_out

  step_ref, p_ref = _final(tmp_path / 'ref')
  step_again, p_again = _final(work)
  assert step_ref == step_again
  for a, b in zip(jax.tree_util.tree_leaves(p_ref), jax.tree_util.tree_leaves(p_again)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
