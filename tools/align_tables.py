"""Channel-subset and temperature tables of the aligner (the paper's Tables 2-3) at CPU scale.

Trains every run through `python -m osteojax.main --config configs/align.py` (each in
<root>/<name>_seed<k>, skipped when its eval_test.json already exists, so the tool resumes),
then writes <root>/align_tables.{md,json}: mean +- sd over seeds of each metric, on the
generated BodySim test split.

  python tools/align_tables.py --root runs/align_tables --seeds 0,1 --steps 150
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
KEYS = ('recall@1', 'recall@5', 'recall@10', 'mean_rank', 'auc', 'eer', 'tpr_at_fpr')


def runs(seeds):
  """(table, row label, run name, seed, overrides) of every run; the seeds of one row follow
  each other, channel rows first, so a cut-short sweep still gives whole rows."""
  rows = [('channels', name, name, [f'--config.model.dxa_channels={d!r}',
                                    f'--config.model.mri_channels={m!r}'])
          for name, d, m in CHANNELS]
  rows.append(('channels', 'pooled baseline (BT_FW)', 'pooled', ['--config.model.encoder=pooled']))
  rows += [('temperature', f'tau={t:g}', 'BT_FW' if t == 0.01 else f'tau{t:g}',
            [f'--config.loss.temperature={t}']) for t in TEMPERATURES]
  return [(table, label, f'{name}_seed{seed}', seed, over)
          for table, label, name, over in rows for seed in seeds]


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
  p.add_argument('--steps', type=int, default=150)
  p.add_argument('--only', default='',
                 help='comma list of run names to train, in this order (others: only read)')
  p.add_argument('--report-only', action='store_true', help='only collect finished runs')
  args = p.parse_args(argv)
  seeds = [int(s) for s in args.seeds.split(',')]
  plan = runs(seeds)
  only = [n for n in args.only.split(',') if n]
  order = sorted(plan, key=lambda r: only.index(r[2]) if r[2] in only else len(only))
  for table, label, name, seed, over in order:       # train (in --only order when given)
    work = os.path.join(args.root, name)
    res = os.path.join(work, 'eval_test.json')
    if os.path.exists(res) or args.report_only or (only and name not in only):
      continue
    t = time.time()
    cmd = [sys.executable, '-m', 'osteojax.main', '--config', 'configs/align.py',
           '--workdir', work, f'--config.seed={seed}', f'--config.steps={args.steps}',
           f'--config.ckpt_every={args.steps}'] + over
    print(' '.join(cmd), flush=True)
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, encoding='utf-8', errors='replace')
    os.makedirs(args.root, exist_ok=True)
    with open(os.path.join(args.root, f'{name}.log'), 'w', encoding='utf-8') as f:
      f.write(r.stdout + r.stderr)
    print(f'{name}: ' + (f'failed (see {name}.log)' if r.returncode
                         else f'{time.time() - t:.0f} s'), flush=True)
  done = {}
  for table, label, name, seed, over in plan:          # collect
    res = os.path.join(args.root, name, 'eval_test.json')
    if os.path.exists(res):
      with open(res, encoding='utf-8') as f:
        done[name] = json.load(f)
  lines, table_json = [], {}
  for table, title in (('channels', 'Channel subsets (tau 0.01)'),
                       ('temperature', 'Temperature (DXA bone+tissue, MRI fat+water)')):
    lines += [f'### {title}', '',
              '| input | seeds | R@1 % | R@5 % | R@10 % | mean rank | AUC | EER % | '
              'TPR@FPR=1% |', '|---|---|---|---|---|---|---|---|---|']
    labels = list(dict.fromkeys(lab for tb, lab, *_ in plan if tb == table))
    for lab in labels:
      names = [n for tb, lb, n, *_ in plan if tb == table and lb == lab and n in done]
      if not names:
        continue
      ms = [done[n]['metrics'] for n in names]
      seeds_done = [done[n]['seed'] for n in names]
      table_json.setdefault(table, {})[lab] = {k: [m[k] for m in ms] for k in KEYS}
      table_json[table][lab]['seeds'] = seeds_done
      lines.append(f'| {lab} | {",".join(map(str, seeds_done))} | '
                   + ' | '.join(fmt([m[k] for m in ms], k) for k in KEYS) + ' |')
    lines.append('')
  n = next(iter(done.values()))['n'] if done else 0
  head = (f'Generated BodySim test split (N = {n} pairs), {args.steps} training steps per run; '
          f'mean ± sd over seeds (model init, batch order, augmentation; the data is fixed).\n')
  os.makedirs(args.root, exist_ok=True)
  with open(os.path.join(args.root, 'align_tables.md'), 'w', encoding='utf-8') as f:
    f.write(head + '\n' + '\n'.join(lines))
  with open(os.path.join(args.root, 'align_tables.json'), 'w', encoding='utf-8') as f:
    json.dump(dict(steps=args.steps, tables=table_json), f, indent=1)
  print(head + '\n' + '\n'.join(lines))
  return 0


if __name__ == '__main__':
  sys.exit(main())
