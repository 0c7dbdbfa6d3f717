"""Pre-train TP-SwAV and SwAV with several seeds and probe the frozen encoders (and random init).

  python tools/probe_grid.py --seeds 0 1 2 --out results/probe [--arg ''] [--epochs 2]
      [--labeled-scale 0.05]

Each run is `python -m osteojax.main --config configs/<method>.py --workdir <out>/<method>_s<seed>`
(resumed / skipped when already complete). Writes <out>/probe.json and <out>/probe.md: linear-probe
osteoporosis AUC and BMD R^2 (osteojax/probe.py), mean +- sd over seeds, as measured.
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'configs'))

import tp_swav  # noqa: E402

from osteojax import probe  # noqa: E402


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
  ap.add_argument('--out', default='results/probe')
  ap.add_argument('--arg', default='', help="config argument ('' = CPU default, tiny, paper)")
  ap.add_argument('--epochs', type=int, default=None, help='override config.epochs')
  ap.add_argument('--labeled-scale', type=float, default=None,
                  help='override config.data.labeled_scale (0.05: the data set of the README table)')
  a = ap.parse_args()
  results = {}
  for method in ('tp_swav', 'swav', 'random'):
    for seed in a.seeds:
      config = tp_swav.get_config(a.arg or None)
      config.seed = seed
      if a.labeled_scale is not None:
        config.data.labeled_scale = a.labeled_scale
      workdir = None
      if method != 'random':
        workdir = os.path.join(a.out, f'{method}_s{seed}')
        cmd = [sys.executable, '-m', 'osteojax.main', '--config',
               f'{ROOT}/configs/{method}.py' + (f':{a.arg}' if a.arg else ''),
               '--workdir', workdir, f'--config.seed={seed}']
        if a.epochs:
          cmd.append(f'--config.epochs={a.epochs}')
        if a.labeled_scale is not None:
          cmd.append(f'--config.data.labeled_scale={a.labeled_scale}')
        print('+', ' '.join(cmd), flush=True)
        subprocess.run(cmd, check=True)
      r = probe.run_probe(config, workdir)
      print(method, seed, r, flush=True)
      results.setdefault(method, []).append(dict(seed=seed, **r))
  os.makedirs(a.out, exist_ok=True)
  with open(os.path.join(a.out, 'probe.json'), 'w', encoding='utf-8') as f:
    json.dump(results, f, indent=1)
  lines = ['| encoder | seeds | osteoporosis AUC (mean +- sd) | BMD R^2 (mean +- sd) |',
           '|---|---|---|---|']
  for method, rs in results.items():
    auc = np.array([r['auc'] for r in rs])
    r2 = np.array([r['r2'] for r in rs])
    lines.append(f'| {method} | {len(rs)} | {auc.mean():.3f} +- {auc.std(ddof=1) if len(rs) > 1 else 0:.3f} '
                 f'| {r2.mean():.3f} +- {r2.std(ddof=1) if len(rs) > 1 else 0:.3f} |')
  text = '\n'.join(lines) + '\n'
  with open(os.path.join(a.out, 'probe.md'), 'w', encoding='utf-8') as f:
    f.write(text)
  print(text)


if __name__ == '__main__':
  main()
