"""Fine-tuning recipe choices, made on the validation split: a table of variants.

  python tools/recipe_choices.py --seeds 0 1 --out results/recipe [--variants NAME ...]
      [--epochs 8] [--arg '']

Each variant is the fine-tuning default (configs/finetune.py: scratch encoder, unified loss,
device-gated MoE) with BASE (scanner intensity, no class weights) and one setting changed; each runs `python -m osteojax.main --config
configs/finetune.py --workdir <out>/<variant>_s<seed>` (finished runs skipped, interrupted
ones resumed). The table reads only <workdir>/validation.json (validation vertebra AUC each
epoch, all sites pooled): the best epoch's AUC, the mean AUC over the last half of the epochs
(less noisy than a maximum), the best epoch, and the validation BMD MAE at the best epoch. The
test split is never read. Writes <out>/recipe.md and <out>/recipe.json.
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np

from osteojax.diagnosis import finetune

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# What the variants share (the fine-tuning default when the sweep ran), so the table does not
# move when a choice it made becomes the default: scanner intensity, no class weights.
BASE = {'augment.intensity': 'scanner', 'loss.class_weight': 'none'}
VARIANTS = {  # name: (what it asks, overrides of BASE)
    'intensity_legacy': ('first build: x * U(0.9, 1.1) + U(-0.1, 0.1) (+-150 HU)',
                         {'augment.intensity': 'legacy'}),
    'intensity_none': ('flips only', {'augment.intensity': 'none'}),
    'intensity_offset': ('+ HU offset within the scanners\' (+-18 HU)',
                         {'augment.intensity': 'offset'}),
    'intensity_scanner': ('+ offset and bone gain within the scanners\' (+-18 HU, +-7%)',
                          {'augment.intensity': 'scanner'}),
    'class_balanced': ('scanner intensity + class weights n / (2 n_class)',
                       {'loss.class_weight': 'balanced'}),
    'ema': ('scanner intensity + weight moving average (decay 0.98)',
            {'optim.ema_decay': 0.98}),
    'bmd_per_device': ('scanner intensity, BMD standardised per device (ablation)',
                       {'loss.bmd_standardise': 'device'}),
}


def run(out, name, seed, epochs, arg):
  wd = os.path.join(out, f'{name}_s{seed}')
  if os.path.exists(os.path.join(wd, 'predictions.csv')):
    return wd
  over = {'seed': seed, **BASE, **VARIANTS[name][1]}
  if epochs:
    over['epochs'] = epochs
  cmd = [sys.executable, '-m', 'osteojax.main', '--config',
         os.path.join(ROOT, 'configs', 'finetune.py') + (f':{arg}' if arg else ''),
         '--workdir', wd] + [f'--config.{k}={v}' for k, v in over.items()]
  print('+', ' '.join(cmd), flush=True)
  subprocess.run(cmd, check=True, cwd=ROOT)
  return wd


def summarise(wd) -> dict:
  with open(os.path.join(wd, 'validation.json'), encoding='utf-8') as f:
    h = json.load(f)
  e = h['entries']
  best = [x for x in e if x['step'] == h['best_step']][0]
  auc = [finetune.validation_auc(x) for x in e]
  return dict(best_auc=finetune.validation_auc(best), late_auc=float(np.mean(auc[len(auc) // 2:])),
              best_epoch=e.index(best) + 1, epochs=len(e), bmd_mae=best.get('bmd_mae'))


def _ms(v):
  v = np.asarray(v, float)
  return f'{v.mean():.3f}' + (f' ± {v.std(ddof=1):.3f}' if len(v) > 1 else '')


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--seeds', type=int, nargs='+', default=[0, 1])
  ap.add_argument('--variants', nargs='+', default=list(VARIANTS), choices=list(VARIANTS))
  ap.add_argument('--out', default='results/recipe')
  ap.add_argument('--epochs', type=int, default=None, help='override config.epochs')
  ap.add_argument('--arg', default='', help="config argument ('' = CPU default, tiny)")
  a = ap.parse_args()
  res = {}
  for seed in a.seeds:                   # seed-major: an interrupted sweep covers every row
    for name in a.variants:
      res.setdefault(name, []).append(dict(seed=seed, **summarise(run(a.out, name, seed,
                                                                        a.epochs, a.arg))))
  lines = ['| variant | what changes | seeds | validation AUC, best epoch | validation AUC, '
           'last half of epochs | best epoch | validation BMD MAE (g/cm²) |',
           '|---|---|---|---|---|---|---|']
  for name, rs in res.items():
    mae = [r['bmd_mae'] for r in rs if r['bmd_mae'] is not None]
    lines.append(f'| {name} | {VARIANTS[name][0]} | {len(rs)} | '
                 f'{_ms([r["best_auc"] for r in rs])} | {_ms([r["late_auc"] for r in rs])} | '
                 f'{", ".join(str(r["best_epoch"]) for r in rs)} of {rs[0]["epochs"]} | '
                 f'{_ms(mae) if mae else "-"} |')
  text = '\n'.join(lines) + '\n'
  os.makedirs(a.out, exist_ok=True)
  with open(os.path.join(a.out, 'recipe.md'), 'w', encoding='utf-8') as f:
    f.write(text)
  with open(os.path.join(a.out, 'recipe.json'), 'w', encoding='utf-8') as f:
    json.dump(res, f, indent=1)
  print(text)


if __name__ == '__main__':
  main()
