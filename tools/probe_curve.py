"""The linear-probe learning curve of pre-training: probe AUC / BMD R^2 against steps.

  python tools/probe_curve.py --methods tp_swav swav --seeds 0 --epochs 12 --every 47 \
      --out results/probe_curve [--bn recompute running] [--arg ''] [--set key=value ...]

For each method and seed, pre-trains `python -m osteojax.main --config configs/<method>.py
--workdir <out>/<method>_s<seed>` for --epochs with a checkpoint every --every steps (all
kept), then probes the frozen encoder at every checkpoint and at step 0 (random init of the
same seed) with osteojax/diagnosis/probe.py (5-fold CV over labeled train + valid, folds grouped by
patient; test is never used), with each --bn mode. Finished runs and probes are skipped (the
results file is the cache), so an interrupted curve resumes; an --out keeps the --arg and --set
it was made with (settings.json) and refuses others. Writes <out>/probe_curve.json,
<out>/probe_curve.md (a row per checkpoint) and <out>/probe_curve.png. This is how the CPU
default budget of configs/tp_swav.py was chosen (docs/diagnosis.md, "Recipe choices"). Intermediate
checkpoints of one long schedule stand in for separate runs of each budget. Every pre-training
method has a curve (--methods mae voco swinmm alice too; the probe reads the encoder of any), and
--set changes the encoder or the optimiser, e.g. `--methods tp_swav --set model.name=swin3d
optim.lr=1e-4` for the learning rate of a transformer row, chosen on these curves.
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'configs'))

import alice as alice_config  # noqa: E402
import mae as mae_config  # noqa: E402
import swav as swav_config  # noqa: E402
import swinmm as swinmm_config  # noqa: E402
import tp_swav  # noqa: E402
import voco as voco_config  # noqa: E402

from osteojax.diagnosis import probe  # noqa: E402
from osteojax.data import io as dio  # noqa: E402
from osteojax.diagnosis import pool_data  # noqa: E402
from osteojax.train import lib  # noqa: E402

CONFIGS = {'tp_swav': tp_swav, 'swav': swav_config, 'mae': mae_config, 'voco': voco_config,
           'swinmm': swinmm_config, 'alice': alice_config}


def _parse_value(v: str):
  try:
    return json.loads(v)
  except json.JSONDecodeError:
    return v


def _config(method, arg, seed, epochs, every, sets):
  c = CONFIGS[method].get_config(arg or None)
  c.seed, c.epochs, c.ckpt_every, c.keep_checkpoints = seed, epochs, every, 100000
  c.update_from_flattened_dict({k: _parse_value(v) for k, v in (kv.split('=', 1) for kv in sets)})
  return c


def plot(results: dict, path: str):
  import matplotlib
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
  for key, rows in sorted(results.items()):
    method, seed, bn = key.split('|')
    rows = sorted(rows, key=lambda r: r['step'])
    steps = [r['step'] for r in rows]
    style = '-' if bn == 'recompute' else ':'
    for ax, m in zip(axes, ('auc', 'r2')):
      ax.plot(steps, [r[m] for r in rows], style, marker='o', ms=3,
              label=f'{method} seed {seed} ({bn} BN)')
  axes[0].set(xlabel='pre-training step', ylabel='probe osteoporosis AUC (CV)')
  axes[1].set(xlabel='pre-training step', ylabel='probe BMD R² (CV)')
  axes[0].legend(fontsize=6.5)
  fig.suptitle('Linear probe of the frozen encoder (train + valid, folds by patient); '
               'step 0 = random init', fontsize=9)
  fig.tight_layout()
  with dio.atomic_path(path) as tmp:
    fig.savefig(tmp, dpi=120)
  plt.close(fig)


def markdown(results: dict) -> str:
  lines = ['| method | seed | BN | step | probe AUC | probe BMD R² |', '|---|---|---|---|---|---|']
  for key, rows in sorted(results.items()):
    method, seed, bn = key.split('|')
    for r in sorted(rows, key=lambda r: r['step']):
      lines.append(f'| {method} | {seed} | {bn} | {r["step"]} | {r["auc"]:.3f} | '
                   f'{r["r2"]:.3f} |')
  return '\n'.join(lines) + '\n'


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--methods', nargs='+', default=['tp_swav'], choices=list(CONFIGS))
  ap.add_argument('--seeds', type=int, nargs='+', default=[0])
  ap.add_argument('--epochs', type=int, default=12)
  ap.add_argument('--every', type=int, default=47, help='checkpoint (and probe) every N steps')
  ap.add_argument('--bn', nargs='+', default=['recompute'], choices=probe.BN_MODES)
  ap.add_argument('--out', default='results/probe_curve')
  ap.add_argument('--arg', default='', help="config argument ('' = CPU default, tiny, paper)")
  ap.add_argument('--set', nargs='*', default=[], metavar='KEY=VALUE',
                  help='config overrides for pre-training, e.g. optim.lr=1e-4')
  a = ap.parse_args()
  os.makedirs(a.out, exist_ok=True)
  settings, set_path = dict(arg=a.arg, set=sorted(a.set)), os.path.join(a.out, 'settings.json')
  if os.path.exists(set_path):        # an --out holds one setting: its runs and probes are reused
    with open(set_path, encoding='utf-8') as f:
      before = json.load(f)
    if before != settings:
      ap.error(f'{a.out} holds runs of --arg {before["arg"]!r} --set {" ".join(before["set"])}; '
               f'give another --out for other settings')
  else:
    dio.atomic_write_text(set_path, json.dumps(settings))
  res_path = os.path.join(a.out, 'probe_curve.json')
  results = {}
  if os.path.exists(res_path):
    with open(res_path, encoding='utf-8') as f:
      results = json.load(f)
  pools = None
  for method in a.methods:
    for seed in a.seeds:
      c = _config(method, a.arg, seed, a.epochs, a.every, a.set)
      wd = os.path.join(a.out, f'{method}_s{seed}')
      done = os.path.join(wd, 'PRETRAIN_DONE')
      if not os.path.exists(done):
        cmd = [sys.executable, '-m', 'osteojax.main', '--config',
               os.path.join(ROOT, 'configs', f'{method}.py') + (f':{a.arg}' if a.arg else ''),
               '--workdir', wd, f'--config.seed={seed}', f'--config.epochs={a.epochs}',
               f'--config.ckpt_every={a.every}', '--config.keep_checkpoints=100000'] + \
            [f'--config.{kv}' for kv in a.set]
        print('+', ' '.join(cmd), flush=True)
        subprocess.run(cmd, check=True, cwd=ROOT)
        open(done, 'w', encoding='utf-8').close()
      pools = pools or pool_data.ensure_pool(c, ('train', 'valid'), progress=False)
      steps = [0] + lib.Checkpoints(wd).steps()
      for bn in a.bn:
        key = f'{method}|{seed}|{bn}'
        have = {r['step'] for r in results.get(key, [])}
        for step in steps:
          if step in have:
            continue
          r = probe.run_probe(c, wd if step else None, step or None, bn, pools)
          results.setdefault(key, []).append(dict(step=step, **r))
          print(f'[probe] {method} seed {seed} {bn} BN step {step}: AUC {r["auc"]:.3f} '
                f'R2 {r["r2"]:.3f}', flush=True)
          dio.atomic_write_text(res_path, json.dumps(results, indent=1))
  dio.atomic_write_text(os.path.join(a.out, 'probe_curve.md'), markdown(results))
  plot(results, os.path.join(a.out, 'probe_curve.png'))
  print(markdown(results))
  print(f'[probe] {a.out}/probe_curve.png', flush=True)


if __name__ == '__main__':
  main()
