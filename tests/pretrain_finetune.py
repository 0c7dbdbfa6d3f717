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


def run(tmp_path, task: str, encoder: str | None = None) -> dict:
  """configs/<task>.py:tiny into <tmp_path>/<task>, a linear probe of its encoder (running
  statistics: the tiny set is too small to recompute them), then configs/finetune.py:tiny from
  its encoder (model.name=encoder when given) into <tmp_path>/ft. Returns {'pre': the
  pre-training workdir, 'pre_log' and 'ft_log': their stdout, 'probe': the probe's scores,
  'predictions': the fine-tuning run's predictions.csv path}; the callers assert on them."""
  from osteojax.diagnosis import probe
  from osteojax.train import pretrained
  data = f'--config.data.dir={tmp_path / "data"}'
  pre = str(tmp_path / task)
  pre_log = _main('--config', f'configs/{task}.py:tiny', '--workdir', pre, data)
  config = pretrained.read_config(pre)
  config.data.dir = str(tmp_path / 'data')
  scores = probe.run_probe(config, pre, bn='running')
  model = [f'--config.model.name={encoder}'] if encoder else []
  ft_log = _main('--config', 'configs/finetune.py:tiny', '--workdir', str(tmp_path / 'ft'), data,
                 *model, f'--config.init.checkpoint={pre}', '--config.epochs=1')
  return dict(pre=pre, pre_log=pre_log, ft_log=ft_log, probe=scores,
              predictions=tmp_path / 'ft' / 'predictions.csv')

