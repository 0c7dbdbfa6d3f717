"""The experiment grid of the paper's Tables 2-4 on OsteoSim, with baselines and the oracle.

  python tools/run_experiments.py --seeds 0 1 2 --out results/grid [--arg ''] \
      [--finetune-epochs N] [--pretrain-epochs N] [--pretrain-seeds each|shared]

Rows (each fine-tuned with every seed; encoder, data and budget shared):
  scratch_class        ResNet34-3D from scratch, class loss
  swav_class           SwAV-pre-trained encoder, class loss
  tpswav_class         TP-SwAV-pre-trained encoder, class loss
  tpswav_class_bmd     + BMD loss
  tpswav_class_level   + level (position) loss instead (Table 4's third row)
  tpswav_unified       + level loss (the unified loss, eq. 4)
  tpswav_unified_moe   unified + device-gated MoE (the paper's model; the base of the tests)
  mae_vit_class        Table 2's ViT / MAE row: 3-D ViT pre-trained by MAE, class loss
  voco_class           Table 2's ResNet34 / VoCo row: ResNet34-3D pre-trained by VoCo, class loss
  alice_nnformer_class Table 2's nnFormer / Alice row: nnFormer's encoder pre-trained by Alice,
                       class loss
  swin_scratch_class   Table 2's Swin-UNETR row and Table 5's first Swin-T row
  swin_tpswav_class, swin_tpswav_unified_moe
                       Table 5: TP-SwAV and + MoE + unified loss on the 3-D Swin-T
  swinmm_swin_class    Table 2's SwinT / SwinMM row (= Table 5's SwinMM row): 3-D Swin-T
                       pre-trained by SwinMM, class loss
(--rows chooses; the default is the seven ResNet rows above mae_vit_class)
plus hu160, hu110 (Pickhardt 2013 L1 trabecular HU cut-offs), radiomics_lr and _ridge, the
oracle, the CT-only and density-reader oracles (tools/run_baselines.py). Pre-training: one run
per method (PRETRAIN_CONFIGS: configs/tp_swav.py, swav, mae, voco, swinmm, alice) and encoder
per seed, used by the fine-tuning runs of that seed (--pretrain-seeds each, the default: the
spread is that of pre-training and fine-tuning together), or one seed-0 run shared by all
(shared); TP-SwAV on a transformer pre-trains at PRETRAIN_LR (its workdir named with it). The
transformer rows run once their fine-tuning learning rate (FINETUNE_LR) is chosen by
recipe_choices.py --round encoders.
Every run is `python -m osteojax.main ...` in <out>/runs/<row>_s<seed>; finished runs are
skipped, interrupted ones resume from their checkpoints, and a run whose config.json differs
from the config the grid would give it (another learning rate, loss, budget, or a default
changed since) stops the grid with one line. Writes <out>/results.md, results.json,
results_compact.md, results_paper.md (the paper's Tables 2-5 in its row order),
roc_vertebra.png, roc_patient.png (thresholds from validation only), validation_curves.png
(validation AUC against epochs of every fine-tuning run) and prints the tables.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'configs'))

import finetune as finetune_config  # noqa: E402

from osteojax.diagnosis import baselines, finetune  # noqa: E402
from osteojax.data import io as dio  # noqa: E402
from osteojax.data import task as data_task  # noqa: E402
from osteojax.evaluate import diagnosis  # noqa: E402
from osteojax.train import lib  # noqa: E402

ROWS = {  # name: (pre-training: configs/<it>.py, '' none; weights cls/bmd/level, MoE, encoder)
    'scratch_class': ('', (1.0, 0.0, 0.0), False, 'resnet3d'),
    'swav_class': ('swav', (1.0, 0.0, 0.0), False, 'resnet3d'),
    'tpswav_class': ('tp_swav', (1.0, 0.0, 0.0), False, 'resnet3d'),
    'tpswav_class_bmd': ('tp_swav', (1.0, 1.0, 0.0), False, 'resnet3d'),
    'tpswav_class_level': ('tp_swav', (1.0, 0.0, 0.5), False, 'resnet3d'),   # Table 4's
    'tpswav_unified': ('tp_swav', (1.0, 1.0, 0.5), False, 'resnet3d'),
    'tpswav_unified_moe': ('tp_swav', (1.0, 1.0, 0.5), True, 'resnet3d'),
    # Table 2's other rows: Swin-UNETR's encoder from scratch (= swin_scratch_class), ViT + MAE,
    # ResNet34 + VoCo, nnFormer + Alice (each pre-training method's config file: PRETRAIN_CONFIGS)
    'mae_vit_class': ('mae', (1.0, 0.0, 0.0), False, 'vit3d'),
    'voco_class': ('voco', (1.0, 0.0, 0.0), False, 'resnet3d'),
    'alice_nnformer_class': ('alice', (1.0, 0.0, 0.0), False, 'nnformer3d'),
    # Table 5: the backbone ablation on 3-D Swin-T (osteojax/models/swin3d.py)
    'swin_scratch_class': ('', (1.0, 0.0, 0.0), False, 'swin3d'),
    'swin_tpswav_class': ('tp_swav', (1.0, 0.0, 0.0), False, 'swin3d'),
    'swin_tpswav_unified_moe': ('tp_swav', (1.0, 1.0, 0.5), True, 'swin3d'),
    # Table 2's SwinT / SwinMM row, also Table 5's SwinMM row (configs/swinmm.py)
    'swinmm_swin_class': ('swinmm', (1.0, 0.0, 0.0), False, 'swin3d'),
}
# The default: the ResNet rows of Tables 3-4 (TP-SwAV, SwAV, scratch); the other Table 2 rows
# are asked for by name
DEFAULT_ROWS = [r for r in ROWS if ROWS[r][3] == 'resnet3d' and ROWS[r][0] in ('', 'swav',
                                                                                'tp_swav')]
PRETRAIN_CONFIGS = {'tp_swav': 'tp_swav.py', 'swav': 'swav.py', 'mae': 'mae.py',
                    'voco': 'voco.py', 'swinmm': 'swinmm.py',
                    'alice': 'alice.py'}     # pre-training method -> its file in configs/
BASE = 'tpswav_unified_moe'
# The paper's tables in its row order (results_paper.md): labels of a row from ROWS
ENCODER_LABELS = {'resnet3d': 'ResNet34', 'swin3d': 'SwinT', 'vit3d': 'ViT',
                  'nnformer3d': 'nnFormer'}
METHOD_LABELS = {'': '/', 'swav': 'SwAV', 'tp_swav': 'TP-SwAV', 'mae': 'MAE', 'voco': 'VoCo',
                 'swinmm': 'SwinMM', 'alice': 'Alice'}
LOSS_LABELS = {(1.0, 0.0, 0.0): 'class', (1.0, 1.0, 0.0): 'class + BMD',
               (1.0, 0.0, 0.5): 'class + position', (1.0, 1.0, 0.5): 'unified'}
BASELINE_LABELS = {'hu110': 'L1 HU < 110 (rule)', 'radiomics_lr': 'radiomics + LR',
                   'radiomics_ridge': 'radiomics ridge (BMD readout)',
                   'oracle_ct_only': 'CT-only oracle', 'oracle': 'oracle'}
TABLE2_ROWS = ['scratch_class', 'swin_scratch_class', 'mae_vit_class', 'alice_nnformer_class',
               'swinmm_swin_class', 'voco_class', 'swav_class', 'tpswav_class', 'tpswav_unified',
               'tpswav_unified_moe']
PAPER_TABLES = [  # (title, level, rows, with the baselines)
    ('Table 2 (vertebra level)', 'vertebra', TABLE2_ROWS, True),
    ('Table 3 (patient level: positive if any vertebra is)', 'patient', TABLE2_ROWS, True),
    ('Table 4 (loss ablation, ResNet34 + TP-SwAV; vertebra level)', 'vertebra',
     ['tpswav_class', 'tpswav_class_bmd', 'tpswav_class_level', 'tpswav_unified'], False),
    ('Table 5 (backbone ablation, Swin-T; vertebra level)', 'vertebra',
     ['swin_scratch_class', 'swinmm_swin_class', 'swin_tpswav_class',
      'swin_tpswav_unified_moe'], False)]


def row_labels(row: str) -> tuple:
  """(name, model, pre-training, loss) of a grid row as the paper's tables label it."""
  method, weights, use_moe, encoder = ROWS[row]
  model = ENCODER_LABELS[encoder] + ('+MoE' if use_moe else '')
  if row == 'swin_scratch_class':
    model = 'Swin-UNETR (encoder: SwinT)'
  return (row, model, METHOD_LABELS[method], LOSS_LABELS[weights])


def paper_tables(summary: dict) -> str:
  """Markdown: the paper's Tables 2-5 from a grid's summary (rows not run show 0 seeds)."""
  parts = []
  for title, level, rows, with_baselines in PAPER_TABLES:
    rows = [row_labels(r) for r in rows]
    if with_baselines:
      rows += [(b, label, '-', '-') for b, label in BASELINE_LABELS.items()
               if b in summary['models']]
    parts.append(f'{title}: F1 (%) per site, test split, mean ± SD over seeds, threshold by '
                 f"Youden's J on validation; stars: paired t-test across seeds against "
                 f'{summary.get("base", "-")} (* p < 0.05, ** < 0.01, *** < 0.001); AUC on the '
                 f'internal sites A-C; no stars for a stochastic row of one seed (a baseline, '
                 f'the same every seed, pairs with each).\n\n'
                 + diagnosis.paper_table(summary, rows, level))
  return '\n\n'.join(parts) + '\n'
# Fine-tuning learning rate of the transformer encoders, chosen on validation by
# `tools/recipe_choices.py --round encoders` (docs/diagnosis.md, "Other encoders"); the ResNet
# rows keep configs/finetune.py's. TP-SwAV on a transformer pre-trains at the paper's 1e-4
# (configs/swinmm.py and alice.py use it too; 1e-3 made the Swin-T TP-SwAV loss rise).
# Round 'encoders', seed 0, the rule of the other rounds (highest validation AUC at the kept
# epoch, then the last-half mean): Swin-T 1e-4 (0.878; 3e-4 0.874, 1e-3 0.872, each kept at
# epoch 1-2, at a5b77b0's patch-embedding init; before it 0.887, 0.872, 0.853), ViT 1e-3 (0.871;
# 3e-4 0.864, 1e-4 0.867), nnFormer 3e-4 (0.888; 1e-4 0.878, 1e-3 0.851, falling to 0.555
# over its last half).
FINETUNE_LR = {'swin3d': 1e-4, 'vit3d': 1e-3, 'nnformer3d': 3e-4}
PRETRAIN_LR = {('tp_swav', 'swin3d'): 1e-4, ('tp_swav', 'vit3d'): 1e-4,
               ('tp_swav', 'nnformer3d'): 1e-4}


def pretrain_run(runs: str, method: str, encoder: str, seed: int,
                 epochs: int = 0) -> tuple[str, dict]:
  """(workdir, config overrides) of a pre-training run of the grid."""
  tag = '' if encoder == 'resnet3d' else f'_{encoder}'
  over = {'seed': seed, 'model.name': encoder}
  if (method, encoder) in PRETRAIN_LR:    # in the name: a run at another rate is not reused
    over['optim.lr'] = PRETRAIN_LR[method, encoder]
    tag += f'_lr{over["optim.lr"]:g}'
  if epochs:
    over['epochs'] = epochs
  return os.path.join(runs, f'{method}{tag}_s{seed}'), over


def finetune_overrides(row: str, seed: int, checkpoint: str = '', epochs: int = 0) -> dict:
  """Config overrides of a fine-tuning run of the grid (checkpoint: its pre-training workdir,
  '' for a row from scratch)."""
  method, (w_cls, w_bmd, w_level), use_moe, encoder = ROWS[row]
  over = {'seed': seed, 'loss.cls': w_cls, 'loss.bmd': w_bmd, 'loss.level': w_level,
          'head.moe': use_moe, 'model.name': encoder}
  if encoder in FINETUNE_LR:
    over['optim.lr'] = FINETUNE_LR[encoder]
  if not w_bmd:      # no BMD head: the class head ranks, whatever the default readout
    over['score'] = 'prob'
  if method:
    over['init.checkpoint'] = checkpoint
  if epochs:
    over['epochs'] = epochs
  return over


def _main_cmd(config_file, arg, workdir, overrides):
  return ([sys.executable, '-m', 'osteojax.main', '--config',
           os.path.join(ROOT, 'configs', config_file) + (f':{arg}' if arg else ''),
           '--workdir', workdir] + [f'--config.{k}={v}' for k, v in overrides.items()])


# Config keys with no effect on results, left out of the reuse check
BOOKKEEPING = ('log_every', 'ckpt_every', 'keep_checkpoints', 'data.workers')


def _flat(d: dict, prefix: str = '') -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f'{prefix}{k}.'))
    else:
      out[prefix + k] = v
  return out


def _same(key: str, have, want) -> bool:
  if key.endswith('checkpoint') and have and want:   # the results folder may have moved
    return os.path.basename(os.path.normpath(str(have))) == os.path.basename(
        os.path.normpath(str(want)))
  if isinstance(have, bool) and isinstance(want, bool):
    return have == want
  if isinstance(have, bool) or isinstance(want, bool):       # a bool against a number or a name
    return False
  if isinstance(have, (int, float)) and isinstance(want, (int, float)):
    return math.isclose(float(have), float(want), rel_tol=1e-9)
  return have == want


def expected_config(config_file: str, arg: str, over: dict) -> dict:
  """The flat config (dotted keys) a run of the grid gets: configs/<config_file> at `arg` with
  the grid's overrides, as the command line would set them."""
  import importlib
  c = importlib.import_module(os.path.splitext(config_file)[0]).get_config(arg or None)
  c.update_from_flattened_dict(over)
  return _flat(json.loads(c.to_json_best_effort()))


def check_reuse(workdir: str, config_file: str, arg: str, over: dict):
  """SystemExit (one line) when workdir holds a run made with another config than the grid's
  (config file + overrides): a finished run is skipped and a partial one resumed, so a run at
  another learning rate, loss, budget or changed default would otherwise enter the tables
  unseen. Keys the saved config lacks (added since) and BOOKKEEPING are not compared; a
  checkpoint path compares by its folder name."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    return
  with open(path, encoding='utf-8') as fh:
    saved = _flat(json.load(fh))
  for key, want in expected_config(config_file, arg, over).items():
    if key in saved and key not in BOOKKEEPING and not _same(key, saved[key], want):
      raise SystemExit(f'error: {workdir}: made with {key}={saved[key]}, this grid asks '
                       f'{want}; move it aside (or delete it) to rerun, or name another --out')


def _run(cmd, done_file):
  if os.path.exists(done_file):
    print(f'[grid] done already: {os.path.dirname(done_file)}', flush=True)
    return
  print('+', ' '.join(cmd), flush=True)
  t0 = time.time()
  subprocess.run(cmd, check=True, cwd=ROOT)
  print(f'[grid] {time.time() - t0:.0f} s', flush=True)


def validation_table(runs: str, rows, seeds) -> str:
  """Markdown: each row's validation vertebra AUC (all sites pooled) at the kept epoch, mean ±
  SD over its finished seeds, from each run's validation.json (the split the recipe and the
  kept epoch were chosen on; the test tables read the same checkpoints)."""
  import numpy as np
  lines = ['| model | seeds | validation AUC, kept epoch |', '|---|---|---|']
  for row in rows:
    auc = []
    for seed in seeds:
      wd = os.path.join(runs, f'{row}_s{seed}')
      if os.path.exists(os.path.join(wd, finetune.PREDICTIONS)):
        entries, kept = finetune.read_validation(wd)
        auc.append(finetune.validation_auc(entries[kept]))
    if auc:
      sd = f' ± {np.std(auc, ddof=1):.3f}' if len(auc) > 1 else ''
      lines.append(f'| {row} | {len(auc)} | {np.mean(auc):.3f}{sd} |')
  return '\n'.join(lines)


PANELS_PER_LINE = 7


def plot_validation_curves(runs: str, rows, seeds, path: str):
  """Validation AUC against epochs, one panel per row (at most PANELS_PER_LINE to a line),
  one line per seed."""
  import matplotlib
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt
  from osteojax.data import io as dio
  ncol = min(len(rows), PANELS_PER_LINE)
  nrow = -(-len(rows) // ncol)
  fig, axes = plt.subplots(nrow, ncol, figsize=(2.6 * ncol, 2.6 * nrow + 0.3), sharey=True,
                           squeeze=False)
  for ax in axes.flat[len(rows):]:
    ax.set_visible(False)
  for ax, row in zip(axes.flat, rows):
    for seed in seeds:
      wd = os.path.join(runs, f'{row}_s{seed}')
      if not os.path.exists(os.path.join(wd, lib.ValidationHistory.FILE)):
        continue
      entries, k = finetune.read_validation(wd)
      with open(os.path.join(wd, 'config.json'), encoding='utf-8') as fh:
        every = json.load(fh).get('eval_every_epochs', 1)
      ep = [every * (i + 1) for i in range(len(entries))]
      auc = [finetune.validation_auc(e) for e in entries]
      line, = ax.plot(ep, auc, lw=1, label=f'seed {seed}', c=f'C{list(seeds).index(seed)}')
      ax.plot(ep[k], auc[k], 'o', ms=4, c=line.get_color())
    ax.set(title=row, xlabel='epoch')
    ax.title.set_fontsize(8)
  for row_axes in axes:
    row_axes[0].set_ylabel('validation vertebra AUC')
  # the panel with the most seeds names them (a seed has one colour in every panel)
  fullest = max(axes.flat[:len(rows)], key=lambda a: len(a.get_legend_handles_labels()[0]))
  if fullest.get_legend_handles_labels()[0]:
    fullest.legend(fontsize=6)
  fig.suptitle('Fine-tuning: validation AUC per epoch (dot: the checkpoint kept)', fontsize=9)
  fig.tight_layout()
  with dio.atomic_path(path) as tmp:
    fig.savefig(tmp, dpi=110)
  plt.close(fig)


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
  ap.add_argument('--out', default='results/grid')
  ap.add_argument('--arg', default='', help="config argument ('' = CPU default, tiny, paper)")
  ap.add_argument('--rows', nargs='+', default=DEFAULT_ROWS, choices=list(ROWS))
  ap.add_argument('--finetune-epochs', type=int, default=None)
  ap.add_argument('--pretrain-epochs', type=int, default=None)
  ap.add_argument('--pretrain-seeds', choices=('shared', 'each'), default='each')
  ap.add_argument('--no-baselines', action='store_true')
  ap.add_argument('--report-only', action='store_true',
                  help='tables from the finished runs only; start nothing')
  a = ap.parse_args()
  unchosen = sorted({ROWS[r][3] for r in a.rows} - {'resnet3d'} - set(FINETUNE_LR))
  if unchosen and not a.report_only:
    ap.error(f'no fine-tuning learning rate chosen for {unchosen}: run tools/recipe_choices.py '
             '--round encoders and set FINETUNE_LR')
  runs = os.path.join(os.path.abspath(a.out), 'runs')
  t0 = time.time()
  pre_dirs = {}
  for method, encoder in sorted({(ROWS[r][0], ROWS[r][3]) for r in a.rows if ROWS[r][0]}):
    for seed in (a.seeds if a.pretrain_seeds == 'each' else [0]):
      wd, over = pretrain_run(runs, method, encoder, seed, a.pretrain_epochs)
      check_reuse(wd, PRETRAIN_CONFIGS[method], a.arg, over)
      if not a.report_only:
        _run(_main_cmd(PRETRAIN_CONFIGS[method], a.arg, wd, over),
             os.path.join(wd, 'PRETRAIN_DONE'))
        open(os.path.join(wd, 'PRETRAIN_DONE'), 'w', encoding='utf-8').close()
      pre_dirs[method, encoder, seed] = wd
  models = {row: [] for row in a.rows}
  for seed in a.seeds:            # seed-major: an interrupted grid covers every row
    for row in a.rows:
      method, _, _, encoder = ROWS[row]
      wd = os.path.join(runs, f'{row}_s{seed}')
      pre_seed = seed if a.pretrain_seeds == 'each' else 0
      over = finetune_overrides(row, seed, pre_dirs[method, encoder, pre_seed] if method else '',
                                a.finetune_epochs)
      pred_path = os.path.join(wd, finetune.PREDICTIONS)
      check_reuse(wd, 'finetune.py', a.arg, over)
      if not a.report_only:
        _run(_main_cmd('finetune.py', a.arg, wd, over), pred_path)
      if os.path.exists(pred_path):
        models[row].append(diagnosis.read_predictions(pred_path))
  models = {k: v for k, v in models.items() if v}
  n_runs = sum(len(v) for v in models.values())
  print(f'[grid] {n_runs} finished fine-tuning runs: '
        f'{ {k: len(v) for k, v in models.items()} }', flush=True)
  if not a.no_baselines:
    config = finetune_config.get_config(a.arg or None)
    base_preds = baselines.run_baselines(data_task.data_dir(config),
                                         os.path.join(a.out, 'baselines'), report=False,
                                         ridge_score=baselines.ridge_score_for(config.score))
    models.update(base_preds)
  summary = diagnosis.write_report(models, a.out, base=BASE if BASE in models else None,
                                   deterministic=baselines.BASELINES)
  print(diagnosis.markdown_report(summary), flush=True)
  compact = '\n\n'.join(
      f'{level} {metric.upper()} (test split, mean ± SD over seeds):\n\n'
      + diagnosis.compact_table(summary, metric, level)
      for level in diagnosis.LEVELS for metric in ('auc', 'f1', 'f1_f1thr'))
  compact += ('\n\nvertebra AUC (validation split, all sites pooled, the kept epoch; mean ± SD '
              'over seeds):\n\n' + validation_table(runs, a.rows, a.seeds))
  dio.atomic_write_text(os.path.join(a.out, 'results_compact.md'), compact + '\n')
  dio.atomic_write_text(os.path.join(a.out, 'results_paper.md'), paper_tables(summary))
  print(compact, flush=True)
  plot_validation_curves(runs, a.rows, a.seeds, os.path.join(a.out, 'validation_curves.png'))
  print(f'[grid] {n_runs} runs reported in {(time.time() - t0) / 60:.1f} min; tables and ROC '
        f'curves in {a.out}/', flush=True)


if __name__ == '__main__':
  main()
