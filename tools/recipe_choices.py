"""Fine-tuning recipe choices, made on the validation split: a table of variants.

  python tools/recipe_choices.py --seeds 0 1 --out results/recipe [--variants NAME ...]
      [--epochs 8] [--arg ''] [--report-only]
  python tools/recipe_choices.py --round schedule --seeds 0 1 2 --out results/recipe_schedule \
      --init runs/default/pretrain
  python tools/recipe_choices.py --round intensity --seeds 0 1 2 --out results/recipe_intensity \
      --init runs/default/pretrain
  python tools/recipe_choices.py --round readout --seeds 0 1 2 --out results/recipe_readout \
      --init runs/default/pretrain
  python tools/recipe_choices.py --round spatial --seeds 0 1 2 --out results/recipe_spatial \
      --init runs/default/pretrain
  python tools/recipe_choices.py --round length --variants e16 e24 b16 --seeds 0 1 2 \
      --out results/recipe_length --init runs/default/pretrain
  python tools/recipe_choices.py --round encoders --seeds 0 --out results/recipe_encoders \
      [--variants swin3d_lr1e-4 swin3d_lr3e-4 ...]

Round 'first' (the first build's faults): each variant is the fine-tuning default
(configs/finetune.py: scratch encoder, unified loss, device-gated MoE) with BASE (that round's
default written out: scanner intensity, no class weights, 8 epochs at 1e-3, the class head
ranking) and one setting changed. Round 'schedule': each variant is the
fine-tuning default of that round (balanced class weights, scanner intensity, the encoder
from `--init`, make run's TP-SwAV pre-training) with its schedule changed, and every run is
read out both ways (the class head's probability and the BMD head's reading, config.score),
each with its own kept epoch. Round 'encoders': the 3-D Swin-T, ViT and nnFormer encoders
from scratch (class loss, one head, the fine-tuning default otherwise) at lr 1e-4, 3e-4 and
1e-3, for the learning rate of the transformer rows. Round 'intensity': the default of the
schedule round with each intensity augmentation, both readouts (the first round chose it with
the class head ranking), and the scale of the MoE gate's device embedding. Round 'readout':
the default and the calibrated gate, each read out by the class head, the BMD reading and its
T-score (config.score='t'). Round 'spatial': the default with a random translation of the
ROI (config.augment.shift_vox), read out by the T-score. Round 'length': the default trained
for more steps (24 or 32 epochs, or batches of 16; the cosine schedule over each length), read out
by the T-score. Every run is `python -m osteojax.main --config
configs/finetune.py --workdir <out>/<variant>_s<seed>` (finished runs skipped, interrupted ones
resumed). The table reads only <workdir>/validation.json (validation vertebra AUC each epoch,
all sites pooled): the kept epoch's AUC (the epoch of best AUC + BMD R^2, config.select), the
mean AUC over the last half of the epochs (less noisy than a maximum), the kept epoch, and the
validation BMD MAE there. The test split is never read. Writes <out>/recipe.md,
<out>/recipe.json and <out>/validation_curves.png (validation AUC by the run's own config.score
against epochs, one panel per variant, one line per seed).
"""
import argparse
import functools
import json
import os
import subprocess
import sys

import numpy as np

from osteojax.data import io as dio
from osteojax.diagnosis import finetune

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# What the variants share (the fine-tuning default when the sweep ran, written out), so the
# table does not move when a choice it made becomes the default: scanner intensity, no class
# weights, 8 epochs at lr 1e-3, the best validation AUC kept, the class head ranking, flax's
# device embedding init.
BASE = {'augment.intensity': 'scanner', 'loss.class_weight': 'none', 'optim.lr': 1e-3,
        'epochs': 8, 'select': 'auc', 'score': 'prob', 'head.device_embed_std': 0.0}
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
# Round 'schedule': the default of that round (balanced class weights, scanner intensity, lr
# 1e-3 for 8 epochs, the pre-trained encoder) and longer, slower schedules; both readouts.
SCHEDULE_BASE = {'augment.intensity': 'scanner', 'loss.class_weight': 'balanced',
                 'optim.lr': 1e-3, 'epochs': 8, 'score': 'prob', 'head.device_embed_std': 0.0}
SCHEDULES = {
    'lr1e-3_e8': ('lr 1e-3, 8 epochs (the default before this round)', {}),
    'lr1e-3_e16': ('lr 1e-3, 16 epochs', {'epochs': 16, 'ckpt_every': 62}),
    'lr3e-4_e16': ('lr 3e-4, 16 epochs', {'optim.lr': 3e-4, 'epochs': 16, 'ckpt_every': 62}),
}
# Round 'encoders' (the transformer rows of the paper's Tables 2 and 5): each encoder from scratch
# with the class loss and a single head (the grid's swin_scratch_class row), the fine-tuning
# default otherwise (16 epochs, balanced class weights, scanner intensity), at three learning
# rates: the rate of each transformer row, chosen on validation before the grid runs it.
ENCODER_BASE = {'loss.cls': 1.0, 'loss.bmd': 0.0, 'loss.level': 0.0, 'head.moe': False,
                'score': 'prob'}
ENCODER_LRS = {f'{enc}_lr{lr}': (f'{enc} from scratch, lr {lr}',
                                 {'model.name': enc, 'optim.lr': float(lr)})
               for enc in ('swin3d', 'vit3d', 'nnformer3d') for lr in ('1e-4', '3e-4', '1e-3')}
# Round 'intensity': the first round chose the intensity augmentation with the class head
# ranking; the default now ranks by the BMD head, whose error the bone gain raised there (0.088
# vs 0.081 g/cm2). Each mode under the default of the second round (its values written out, so
# the table does not move with later defaults), both readouts.
INTENSITY_BASE = {'loss.class_weight': 'balanced', 'optim.lr': 3e-4, 'epochs': 16,
                  'score': 'bmd', 'head.device_embed_std': 0.0}
INTENSITIES = {
    'scanner': ('offset and bone gain within the scanners\' (+-18 HU, +-7%; the default)',
                {'augment.intensity': 'scanner'}),
    'offset': ('HU offset within the scanners\' (+-18 HU), no gain',
               {'augment.intensity': 'offset'}),
    'none': ('flips only', {'augment.intensity': 'none'}),
    # not an intensity: the gate's device embedding D_I at flax's init (SD 1/sqrt(F), ~0.09)
    # is ~20x smaller than the image embedding P_I (RMS ~1.8 in a trained grid run), so the
    # gate barely sees the device; SD 1 puts D_I at P_I's scale
    'device_embed_std1': ('scanner intensity; the gate\'s device embedding initialised at SD 1',
                          {'augment.intensity': 'scanner', 'head.device_embed_std': 1.0}),
}
# Round 'readout': the label is T <= -2.5 against each maker's reference at each level, so
# ranking raw predicted readings pools scales that differ by maker (Lunar reads ~0.13 g/cm2
# above Hologic) and level (L1's reference is ~0.14 below L3's); the T-score readout
# (config.score='t') undoes both, which needs a head that reads each maker right. The
# default and the calibrated-gate variant of round 'intensity', each read out three ways.
READOUT_VARIANTS = {'default': INTENSITIES['scanner'],
                    'device_embed_std1': INTENSITIES['device_embed_std1']}
# Round 'spatial': the default after round 'readout' (written out), with a random translation of
# the ROI by whole voxels (zero-filled), an augmentation that leaves every intensity as it was.
SPATIAL_BASE = {**INTENSITY_BASE, **INTENSITIES['device_embed_std1'][1], 'score': 't'}
SHIFTS = {'default': ('no translation (the default)', {'augment.shift_vox': 0}),
          'shift2': ('+ translation by up to +-2 voxels per axis (3.6 mm)',
                     {'augment.shift_vox': 2}),
          'shift4': ('+ translation by up to +-4 voxels per axis (7.2 mm)',
                     {'augment.shift_vox': 4})}
# Round 'length': the default after round 'spatial' (the same settings as its base) trained for
# more steps, the cosine schedule stretched over them: more epochs, or the same 16 epochs in
# batches of 16 (twice the steps for the same passes over the data; ~1.6x the time on the 2-core
# CPU, where a small batch uses the cores less well). 'e32' (2x the time) was left out of the
# recorded round (`--variants e16 e24 b16`): it would not fit make run's 15 min whatever it read.
# Whether 16 epochs of 32 is converged: the kept epochs of the earlier rounds sat at 12-15 of 16.
# Rule: the earlier rounds' (highest mean validation AUC at the kept epoch, then the last-half
# mean); as each longer variant costs about 1.5x the default's fine-tuning time, and make run has
# 15 min on 2 cores, one replaces the default only if its lead exceeds the default's seed SD.
LENGTHS = {'e16': ('16 epochs of batches of 32 (the default)', {}),
           'e24': ('24 epochs', {'epochs': 24}),
           'b16': ('16 epochs of batches of 16 (twice the steps)', {'batch_size': 16}),
           'e32': ('32 epochs', {'epochs': 32})}
ROUNDS = {'first': (BASE, VARIANTS), 'schedule': (SCHEDULE_BASE, SCHEDULES),
          'encoders': (ENCODER_BASE, ENCODER_LRS), 'intensity': (INTENSITY_BASE, INTENSITIES),
          'readout': (INTENSITY_BASE, READOUT_VARIANTS), 'spatial': (SPATIAL_BASE, SHIFTS),
          'length': (SPATIAL_BASE, LENGTHS)}
READOUTS = ('prob', 'bmd')


def run_dir(out, name, seed) -> str:
  return os.path.join(out, f'{name}_s{seed}')


def finished(wd) -> bool:
  return os.path.exists(os.path.join(wd, 'predictions.csv'))


def run(out, name, seed, epochs, arg, round_name='first', init=''):
  wd = run_dir(out, name, seed)
  if finished(wd):
    return wd
  base, variants = ROUNDS[round_name]
  over = {'seed': seed, **base, **variants[name][1]}
  if init:
    over['init.checkpoint'] = init
  if epochs:
    over['epochs'] = epochs
  cmd = [sys.executable, '-m', 'osteojax.main', '--config',
         os.path.join(ROOT, 'configs', 'finetune.py') + (f':{arg}' if arg else ''),
         '--workdir', wd] + [f'--config.{k}={v}' for k, v in over.items()]
  print('+', ' '.join(cmd), flush=True)
  subprocess.run(cmd, check=True, cwd=ROOT)
  return wd


def summarise(wd, readout=None) -> dict:
  """The run's validation summary; readout ('prob' / 'bmd' / 't') reads that score's AUC and keeps
  the epoch of best AUC + BMD R^2 by it (config.select's rule), whatever the run selected."""
  e, kept = finetune.read_validation(wd)
  if readout is None:
    best = e[kept]
    auc = [finetune.validation_auc(x) for x in e]
    best_auc = finetune.validation_auc(best)
  else:
    auc = [x[f'auc_{readout}'] for x in e]
    best = max(e, key=lambda x: x[f'auc_{readout}'] + x['bmd_r2'])
    best_auc = best[f'auc_{readout}']
  return dict(best_auc=best_auc, late_auc=float(np.mean(auc[len(auc) // 2:])),
              best_epoch=e.index(best) + 1, epochs=len(e), bmd_mae=best.get('bmd_mae'))


@functools.lru_cache(maxsize=None)     # one read a run, whatever the number of readouts
def device_bias(wd) -> dict:
  """Mean BMD error (predicted - true, g/cm2) per DXA maker on the validation vertebrae of the
  run's kept checkpoint (its predictions.csv)."""
  import pandas as pd
  p = pd.read_csv(os.path.join(wd, finetune.PREDICTIONS))
  p = p[p.split == 'valid']
  return {d: float((g.bmd_pred - g.bmd).mean()) for d, g in p.groupby('device')}


def _ms(v):
  v = np.asarray(v, float)
  return f'{v.mean():.3f}' + (f' ± {v.std(ddof=1):.3f}' if len(v) > 1 else '')


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--seeds', type=int, nargs='+', default=[0, 1])
  ap.add_argument('--round', default='first', choices=list(ROUNDS))
  ap.add_argument('--variants', nargs='+', default=None,
                  choices=[v for _, vs in ROUNDS.values() for v in vs],
                  help="the round's variants (default: all of them)")
  ap.add_argument('--init', default='', help='encoder from this pre-training workdir')
  ap.add_argument('--out', default='results/recipe')
  ap.add_argument('--epochs', type=int, default=None, help='override config.epochs')
  ap.add_argument('--arg', default='', help="config argument ('' = CPU default, tiny)")
  ap.add_argument('--report-only', action='store_true',
                  help='train nothing: tabulate the finished runs (a row gives its seed count)')
  a = ap.parse_args()
  variants = ROUNDS[a.round][1]
  names = a.variants or list(variants)
  unknown = [n for n in names if n not in variants]
  if unknown:
    ap.error(f'variant(s) {unknown} are not in round {a.round!r}: {", ".join(variants)}')
  if a.round == 'encoders' and a.init:
    ap.error("round 'encoders' trains every encoder from scratch; --init does not apply")
  readouts = {'schedule': READOUTS, 'intensity': READOUTS, 'readout': READOUTS + ('t',),
              'spatial': ('t',), 'length': ('t',)}.get(a.round, (None,))
  res = {}
  for seed in a.seeds:                   # seed-major: an interrupted sweep covers every row
    for name in names:
      wd = run_dir(a.out, name, seed)
      if not a.report_only:
        run(a.out, name, seed, a.epochs, a.arg, a.round, a.init)
      elif not finished(wd):
        continue
      for r in readouts:
        res.setdefault((name, r), []).append(dict(seed=seed, **summarise(wd, r)))
  bias = a.round in ('intensity', 'readout', 'spatial', 'length')     # + the BMD error per maker
  makers = ('hologic', 'ge_lunar', 'medix')
  lines = ['| variant | what changes | readout | seeds | validation AUC, kept epoch | '
           'validation AUC, last half of epochs | kept epoch | validation BMD MAE (g/cm²) |'
           + (' validation BMD bias at the run\'s kept checkpoint, Hologic / Lunar / MEDIX '
              '(g/cm²) |' if bias else ''),
           '|---|---|---|---|---|---|---|---|' + ('---|' if bias else '')]
  for (name, readout), rs in res.items():
    mae = [r['bmd_mae'] for r in rs if r['bmd_mae'] is not None]
    line = (f'| {name} | {variants[name][0]} | {readout or "prob"} | {len(rs)} | '
            f'{_ms([r["best_auc"] for r in rs])} | {_ms([r["late_auc"] for r in rs])} | '
            f'{", ".join(str(r["best_epoch"]) for r in rs)} of {rs[0]["epochs"]} | '
            f'{_ms(mae) if mae else "-"} |')
    if bias:
      b = [device_bias(run_dir(a.out, name, r['seed'])) for r in rs]
      line += ' ' + ' / '.join(f'{np.mean([x[m] for x in b]):+.3f}' for m in makers) + ' |'
    lines.append(line)
  text = '\n'.join(lines) + '\n'
  os.makedirs(a.out, exist_ok=True)
  dio.atomic_write_text(os.path.join(a.out, 'recipe.md'), text)
  dio.atomic_write_text(os.path.join(a.out, 'recipe.json'), json.dumps(
      {f'{n}/{r or "prob"}': v for (n, r), v in res.items()}, indent=1))
  # the grid's figure, one panel per variant (the AUC of the run's own config.score)
  sys.path.insert(0, os.path.join(ROOT, 'tools'))
  from run_experiments import plot_validation_curves
  plot_validation_curves(a.out, names, a.seeds, os.path.join(a.out, 'validation_curves.png'))
  print(text)


if __name__ == '__main__':
  main()
