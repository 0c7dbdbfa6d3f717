"""Pre-train a tiny encoder through the entry point, then fine-tune from it for one epoch: the
slow end-to-end test of each pre-training method (test_mae, test_voco, test_swinmm, test_alice)."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(*args: str) -> str:
  """stdout of `python -m osteojax.main *args`, asserting it exits 0."""
  r = subprocess.run([sys.executable, '-m', 'osteojax.main', *args], capture_output=True,
                     encoding='utf-8', errors='replace', cwd=ROOT,
                     env=dict(os.environ, PYTHONPATH=ROOT))
  assert r.returncode == 0, r.stderr[-3000:]
  return r.stdout


def run(tmp_path, task: str, encoder: str | None = None) -> str:
  """configs/<task>.py:tiny into <tmp_path>/<task>, then configs/finetune.py:tiny from its encoder
  (model.name=encoder when given) into <tmp_path>/ft; returns the pre-training workdir."""
  data = f'--config.data.dir={tmp_path / "data"}'
  pre = str(tmp_path / task)
  assert f'[{task}] done' in _main('--config', f'configs/{task}.py:tiny', '--workdir', pre, data)
  # the linear probe reads the run's encoder (running statistics: the tiny set is too small to
  # recompute them)
  from osteojax.diagnosis import probe
  from osteojax.train import pretrained
  config = pretrained.read_config(pre)
  config.data.dir = str(tmp_path / 'data')
  r = probe.run_probe(config, pre, bn='running')
  assert 0.0 <= r['auc'] <= 1.0 and r['n'] > 0
  model = [f'--config.model.name={encoder}'] if encoder else []
  out = _main('--config', 'configs/finetune.py:tiny', '--workdir', str(tmp_path / 'ft'), data,
              *model, f'--config.init.checkpoint={pre}', '--config.epochs=1')
  assert f'encoder from {pre}' in out
  assert (tmp_path / 'ft' / 'predictions.csv').exists()
  return pre
