"""Channel-subset and temperature tables of the aligner (the paper's Tables 2-3) at CPU scale,
and the recipe table that chose the default encoder scale and augmentation.

Trains every run through `python -m osteojax.main --config configs/align.py` (each in
<root>/<name>_seed<k>, skipped when its eval_<split>.json already exists, so the tool resumes),
then writes <root>/align_tables.{md,json}: mean +- sd over seeds of each metric.

- channels, temperature: evaluated on the generated BodySim test split, `--steps` per run
  (default SWEEP_STEPS, 800: the default's length when the sweep started), translation
  augmentation `--shift-px` (default 1 px, the default's). Every table has the
  keypoint-geometry reference of its pairs (the retrieval ceiling) and each row's R@1 as a
  fraction of it.
- recipe: the rows of RECIPES (the earlier recipe, the authors' augmentation with 3 / 2 / 1
  poolings, a wider translation) at RECIPE_STEPS (400), and the chosen row at 800 (the
  default then), evaluated on the
  *validation* split only (retrieval, the keypoint-geometry reference, and where the aligner's
  correlation places each MRI map, which registration needs): the table that chose the default.
  Every run keeps its checkpoint of best validation mean rank, so these validation figures are
  optimistic for all rows alike; test is never used to choose.

- schedule: the learning-rate schedule at SCHEDULE_STEPS (800) and SCHEDULE_LR (constant Adam
  lr against cosine decay from the same lr to 0), evaluated like the recipe rows on the
  validation split only, with the same placement columns and validation curves.
- steps: 800 against 1600 steps at that constant lr, the same way. The 300-pair validation
  reading that chose between them is `tools/eval_align.py --split val --data <a BodySim folder
  with 300 validation pairs>` on the runs (docs/align.md).
- starts: one start against three of 200 steps chosen on validation (config.starts), at
  STARTS_STEPS (1600), the same way; the curves of a run of several starts begin at the chosen
  start's history.

  python tools/align_tables.py --root results/align_tables --seeds 0,1   # 800 steps, one start
  python tools/align_tables.py --root results/align_recipe --tables recipe --seeds 0,1
  python tools/align_tables.py --root results/align_schedule --tables schedule --seeds 0,1,2
  python tools/align_tables.py --root results/align_steps --tables steps --seeds 0,1,2,3
  python tools/align_tables.py --root results/align_starts --tables starts --seeds 0,1,2,3

`--record DIR` keeps a copy of each finished run's evaluation (eval_<split>.json, a few kB: the
metrics, not the weights) in DIR as <name>.eval_<split>.json, and counts a run recorded there as
finished: a sweep of many hours can then span machines, and `--report-only --record DIR`
rebuilds the tables from the records alone (docs/results/ holds the records of the tables the
docs quote).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHANNELS = [   # (name, DXA channels, MRI channels): the paper's Table 2 rows + the baseline
    ('B_F', ('bone',), ('fat',)),
    ('B_FW', ('bone',), ('fat', 'water')),
    ('T_FW', ('tissue',), ('fat', 'water')),
    ('BT_F', ('bone', 'tissue'), ('fat',)),
    ('BT_W', ('bone', 'tissue'), ('water',)),
    ('BT_FW', ('bone', 'tissue'), ('fat', 'water')),
]
TEMPERATURES = (0.1, 0.05, 0.01, 0.005, 0.001)
RECIPE_STEPS = 400   # the budget the recipe was chosen at (its last row is 800, the next default)
RECIPES = [   # (label, run name, config argument, overrides)
    ('earlier recipe: 3 poolings, +-8 px, no rotation / gamma / normalisation', 'legacy',
     'legacy', []),
    ("authors' augmentation, 3 poolings (cells 70 mm, receptive field 598 mm)", 'pools3', '',
     ['--config.model.pools=3']),
    ("authors' augmentation, 2 poolings (35 mm, 422 mm)", 'pools2', '',
     ['--config.model.pools=2']),
    ("authors' augmentation, 1 pooling (17.6 mm, 264 mm): 'auto' at 8.8 mm", 'pools1', '',
     ['--config.model.pools=1']),
    ('1 pooling, +-4 px translation', 'pools1_shift4', '',
     ['--config.model.pools=1', '--config.augment.shift_px=4']),
    ('1 pooling, 800 steps', 'pools1_steps800', '',
     ['--config.model.pools=1', '--config.steps=800']),
]
SCHEDULE_LR, SCHEDULE_STEPS = 1e-3, 800   # the lr and steps the schedules were compared at
SWEEP_STEPS = 800   # the channel and temperature rows: all at the length the sweep started at
SCHEDULES = [   # (label, run name, overrides): the values are pinned, so the rows keep meaning
    # what was run when the default changes
    (f'constant lr {SCHEDULE_LR:g}', 'lr_constant',
     [f'--config.steps={SCHEDULE_STEPS}', '--config.optim.decay=constant']),
    (f'cosine decay from lr {SCHEDULE_LR:g} to 0', 'lr_cosine',
     [f'--config.steps={SCHEDULE_STEPS}', '--config.optim.decay=cosine']),
]
STEPS = [   # (label, run name, overrides): training length at the constant lr (a 1600-step run
    # repeats the 800-step run of its seed, then goes on: the lr does not depend on the length)
    (f'{n} steps, constant lr {SCHEDULE_LR:g}', f'steps{n}',
     [f'--config.steps={n}', '--config.optim.decay=constant']) for n in (800, 1600)]
STARTS_STEPS = 1600   # the default's length when several starts were first compared
STARTS = [   # (label, run name, overrides): one start against three chosen on validation
    ('1 start', 'starts1', [f'--config.steps={STARTS_STEPS}', '--config.starts=1']),
    ('3 starts of 200 steps, the best on validation', 'starts3',
     [f'--config.steps={STARTS_STEPS}', '--config.starts=3', '--config.start_steps=200'])]
KEYS = ('recall@1', 'recall@5', 'recall@10', 'mean_rank', 'auc', 'eer', 'tpr_at_fpr')
PLACEMENT_KEYS = ('within_one_cell', 'mean_distance_cells', 'peak_in_top_row')
TITLES = dict(channels='Channel subsets (tau 0.01)',
              temperature='Temperature (DXA bone+tissue, MRI fat+water)',
              recipe=f'Encoder scale and augmentation (validation split; {RECIPE_STEPS} steps '
                     'unless stated)',
              schedule=f'Learning-rate schedule (validation split; {SCHEDULE_STEPS} steps)',
              steps='Training steps (validation split)',
              starts=f'Several starts (validation split; {STARTS_STEPS} steps)')
SPLIT = dict(channels='test', temperature='test', recipe='val', schedule='val', steps='val',
             starts='val')
CHOICE = ('recipe', 'schedule', 'steps', 'starts')   # read on validation, with placement and curves
STYLES = ('-', '--', ':', '-.')   # line style of seed k in the validation curves


def runs(seeds, tables=tuple(TITLES)):
  """(table, row label, run name, seed, overrides, config argument) of every run; the seeds of
  one row follow each other, channel rows first, so a cut-short sweep still gives whole rows.
  Recipe runs go seed-major (every row's seed 0 first), so a cut-short sweep still compares
  every row."""
  rows = [('channels', name, name, [f'--config.model.dxa_channels={d!r}',
                                    f'--config.model.mri_channels={m!r}'], '')
          for name, d, m in CHANNELS]
  rows.append(('channels', 'pooled baseline (BT_FW)', 'pooled', ['--config.model.encoder=pooled'],
               ''))
  rows += [('temperature', f'tau={t:g}', 'BT_FW' if t == 0.01 else f'tau{t:g}',
            [f'--config.loss.temperature={t}'], '') for t in TEMPERATURES]
  out = [(table, label, f'{name}_seed{seed}', seed, over, arg)
         for table, label, name, over, arg in rows if table in tables for seed in seeds]
  if 'recipe' in tables:
    out += [('recipe', label, f'{name}_seed{seed}', seed, over + ['--config.eval_split=val'], arg)
            for seed in seeds for label, name, arg, over in RECIPES]
  if 'schedule' in tables:
    out += [('schedule', label, f'{name}_seed{seed}', seed, over + ['--config.eval_split=val'], '')
            for seed in seeds for label, name, over in SCHEDULES]
  for table, rows in (('steps', STEPS), ('starts', STARTS)):
    if table in tables:
      out += [(table, label, f'{name}_seed{seed}', seed, over + ['--config.eval_split=val'], '')
              for seed in seeds for label, name, over in rows]
  # every other table was run with one start: pinned, so its rows keep meaning what was run
  return [r if r[0] == 'starts' else r[:4] + (r[4] + ['--config.starts=1'], r[5]) for r in out]


def _own_and_kept(root, table, name, record):
  """(<root>/<name>/eval_<split>.json, its copy in the record folder or '' without one)."""
  file = f'eval_{SPLIT[table]}.json'
  return (os.path.join(root, name, file),
          os.path.join(record, f'{name}.{file}') if record else '')


def result_path(root, table, name, record=''):
  """The run's evaluation in <root>/<name>, else its copy in the record folder (when one is
  given and holds it), else the path the run will write."""
  own, kept = _own_and_kept(root, table, name, record)
  return kept if kept and not os.path.exists(own) and os.path.exists(kept) else own


def keep_record(root, table, name, record):
  """Copy a finished run's evaluation into the record folder (atomic; kept if present)."""
  from osteojax.data import io as dio
  own, kept = _own_and_kept(root, table, name, record)
  if kept and os.path.exists(own) and not os.path.exists(kept):
    os.makedirs(record, exist_ok=True)
    with open(own, encoding='utf-8') as f:
      dio.atomic_write_text(kept, f.read())


def fmt(vals, key):
  v = np.asarray(vals, float)
  scale = 100 if key in ('recall@1', 'recall@5', 'recall@10', 'eer') else 1
  digits = 4 if key == 'auc' else (3 if key == 'tpr_at_fpr' else (2 if key == 'mean_rank' else 1))
  sd = f' ± {scale * v.std(ddof=1):.{digits}f}' if len(v) > 1 else ''
  return f'{scale * v.mean():.{digits}f}{sd}'


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--root', default='runs/align_tables')
  p.add_argument('--seeds', default='0,1')
  p.add_argument('--steps', type=int, default=SWEEP_STEPS,
                 help='steps per run of the channel and temperature tables (default: the 800 '
                      'they started at, before the default became 1600)')
  p.add_argument('--shift-px', type=int, default=1,
                 help='translation augmentation of the channel and temperature tables')
  p.add_argument('--tables', default='channels,temperature',
                 help=f'comma list of {",".join(TITLES)}')
  p.add_argument('--only', default='',
                 help='comma list of run names to train, in this order (others: only read)')
  p.add_argument('--report-only', action='store_true', help='only collect finished runs')
  p.add_argument('--record', default='',
                 help='folder of finished runs\' evaluations: read as finished, and each new one '
                      'copied there')
  args = p.parse_args(argv)
  seeds = [int(s) for s in args.seeds.split(',')]
  tables = [t for t in args.tables.split(',') if t]
  unknown = set(tables) - set(TITLES)
  if unknown:
    p.error(f'unknown table(s) {sorted(unknown)}; choose from {",".join(TITLES)}')
  plan = runs(seeds, tables)
  only = [n for n in args.only.split(',') if n]
  order = sorted(plan, key=lambda r: only.index(r[2]) if r[2] in only else len(only))
  for table, label, name, seed, over, arg in order:  # train (in --only order when given)
    work = os.path.join(args.root, name)
    if (os.path.exists(result_path(args.root, table, name, args.record)) or args.report_only
        or (only and name not in only)):
      continue
    t = time.time()
    if table == 'recipe':
      sized = [] if any('steps=' in o for o in over) else [f'--config.steps={RECIPE_STEPS}']
    elif table in ('schedule', 'steps', 'starts'):     # their rows state their steps
      sized = [f'--config.optim.lr={SCHEDULE_LR}']
    else:
      # checkpoints at the config's cadence, so a run cut short resumes from its last one
      sized = ([f'--config.steps={args.steps}'] if args.steps else []) + [
          f'--config.augment.shift_px={args.shift_px}']
    cfg = 'configs/align.py' + (f':{arg}' if arg else '')
    cmd = [sys.executable, '-m', 'osteojax.main', '--config', cfg,
           '--workdir', work, f'--config.seed={seed}'] + sized + over
    os.makedirs(args.root, exist_ok=True)
    log = os.path.join(args.root, f'{name}.log')
    print(' '.join(cmd) + f'\n  progress: {log}', flush=True)
    with open(log, 'w', encoding='utf-8') as f:     # the run's own progress lines, as they come
      r = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    print(f'{name}: ' + (f'failed (see {name}.log)' if r.returncode
                         else f'{time.time() - t:.0f} s'), flush=True)
    keep_record(args.root, table, name, args.record)
  done = {}
  for table, label, name, seed, over, arg in plan:     # collect
    keep_record(args.root, table, name, args.record)
    res = result_path(args.root, table, name, args.record)
    if os.path.exists(res):
      with open(res, encoding='utf-8') as f:
        done[name] = json.load(f)
  lines, table_json = [], {}
  for table in tables:
    place = table in CHOICE
    lines += [f'### {TITLES[table]}', '',
              '| input | seeds | R@1 % | R@5 % | R@10 % | mean rank | AUC | EER % | TPR@FPR=1% |'
              ' R@1 / reference % |'
              + (' within 1 cell % | placement off, mm | top row % |' if place else ''),
              '|---|---|---|---|---|---|---|---|---|---|' + ('---|---|---|' if place else '')]
    labels = list(dict.fromkeys(lab for tb, lab, *_ in plan if tb == table))
    refs = [done[n]['reference'] for tb, _, n, *_ in plan if tb == table and n in done]
    if refs and refs[0]:          # the retrieval ceiling of these pairs, beside every table
      ref = refs[0]
      lines.insert(len(lines) - 2, f'Reference (keypoint geometry of the truth on the pixel grid, '
                   f'same pairs): R@1 {100 * ref["recall@1"]:.1f} %, R@5 '
                   f'{100 * ref["recall@5"]:.1f} %, mean rank {ref["mean_rank"]:.2f}.\n')
    for lab in labels:
      names = [n for tb, lb, n, *_ in plan if tb == table and lb == lab and n in done]
      if not names:
        continue
      ms = [done[n]['metrics'] for n in names]
      seeds_done = [done[n]['seed'] for n in names]
      row = {k: [m[k] for m in ms] for k in KEYS}
      row['fraction_of_reference'] = [done[n].get('recall1_fraction_of_reference', float('nan'))
                                      for n in names]
      cells = [fmt(row[k], k) for k in KEYS] + [fmt(row['fraction_of_reference'], 'eer')]
      if place:
        pl = [done[n]['placement'] for n in names]
        row.update({k: [q[k] for q in pl] for k in PLACEMENT_KEYS})
        row['placement_error_mm'] = [q['mean_distance_cells'] * q['stride_px']
                                     * done[n]['scale']['spacing_mm'] for q, n in zip(pl, names)]
        cells += [fmt(row['within_one_cell'], 'eer'), fmt(row['placement_error_mm'], 'mean_rank'),
                  fmt(row['peak_in_top_row'], 'eer')]
      table_json.setdefault(table, {})[lab] = dict(row, seeds=seeds_done,
                                                   n=done[names[0]]['n'])
      lines.append(f'| {lab} | {",".join(map(str, seeds_done))} | ' + ' | '.join(cells) + ' |')
    lines.append('')
  steps = f'{args.steps} training steps' if args.steps else "the default's training steps"
  head = (f'Generated BodySim data; channel and temperature rows: test split, {steps}, '
          f'shift_px {args.shift_px}; recipe, schedule, steps and starts rows: validation split, '
          f'the steps their titles and labels state, the checkpoint of best validation mean '
          f'rank. Mean ± sd over seeds (model init, batch order, augmentation; the data is '
          f'fixed).\n')
  os.makedirs(args.root, exist_ok=True)
  from osteojax.data import io as dio
  dio.atomic_write_text(os.path.join(args.root, 'align_tables.md'), head + '\n' + '\n'.join(lines))
  dio.atomic_write_text(os.path.join(args.root, 'align_tables.json'), json.dumps(
      dict(steps=args.steps, shift_px=args.shift_px, tables=table_json), indent=1))
  for table in CHOICE:
    if table in tables:
      curves(args.root, [r for r in plan if r[0] == table], table)
  print(head + '\n' + '\n'.join(lines))
  return 0


def curves(root: str, plan, table: str = 'recipe') -> str | None:
  """<root>/validation_curves.png (<root>/validation_curves_<table>.png for another table than
  the recipe): validation mean rank against training steps, one colour per row, one line style
  per seed (from each run's validation.json)."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  from osteojax.train import lib
  fig, ax = plt.subplots(figsize=(7, 4))
  colours = {}
  for _, label, name, seed, *_ in plan:
    path = os.path.join(root, name, lib.ValidationHistory.FILE)
    if not os.path.exists(path):
      continue
    with open(path, encoding='utf-8') as f:
      e = json.load(f)['entries']
    c = colours.setdefault(label, f'C{len(colours)}')
    ax.plot([x['step'] for x in e], [x['mean_rank'] for x in e], color=c, lw=1.2,
            ls=STYLES[seed % len(STYLES)], label=f'{label} (seed {seed})')
  if not colours:
    plt.close(fig)
    return None
  ax.set_yscale('log')
  ax.set_xlabel('training step (batch 16)')
  ax.set_ylabel('validation mean rank (50 pairs; 1 = perfect)')
  what = dict(recipe='recipes', schedule='learning-rate schedules',
              steps='training lengths', starts='numbers of starts')[table]
  ax.set_title(f'Aligner {what} on generated BodySim data (validation split)', fontsize=9)
  ax.legend(fontsize=6, loc='upper right')
  fig.tight_layout()
  out = os.path.join(root, 'validation_curves.png' if table == 'recipe'
                     else f'validation_curves_{table}.png')
  fig.savefig(out, dpi=120)
  plt.close(fig)
  return out


if __name__ == '__main__':
  sys.exit(main())
