"""Task 'pipeline': the whole vertical slice, one stage after another in one workdir.

  data      generate (or reuse) OsteoSim, print its summary and oracle     <workdir>/data
  pretrain  TP-SwAV pre-training on the unlabeled vertebrae                 <workdir>/pretrain
  finetune  MoE + unified-loss fine-tuning from that encoder, evaluated    <workdir>/finetune
            on valid/test: the per-site table, ROC curves, predictions

Each stage is an ordinary task (osteojax/tasks.py) with its own config section (config.pretrain,
config.finetune); config.data is shared by all of them. Every stage caches or resumes, so a
second run (or a run after an interruption) redoes only what is missing.
"""
from __future__ import annotations

import os
import time

from osteojax import tasks


def stage_config(config, name: str):
  """config.<name> with the shared data settings and the fine-tuning encoder link filled in."""
  c = config[name].copy_and_resolve_references()
  with c.unlocked():
    c.data = config.data.copy_and_resolve_references()
  return c


def run(config, workdir: str):
  t0 = time.time()
  data = stage_config(config, 'osteosim')
  tasks.run(data, os.path.join(workdir, 'data'))
  pre = stage_config(config, 'pretrain')
  tasks.run(pre, os.path.join(workdir, 'pretrain'))
  ft = stage_config(config, 'finetune')
  with ft.unlocked():
    ft.init.checkpoint = os.path.join(workdir, 'pretrain')
  preds = tasks.run(ft, os.path.join(workdir, 'finetune'))
  print(f'[pipeline] data -> TP-SwAV pre-training -> MoE fine-tuning -> evaluation in '
        f'{(time.time() - t0) / 60:.1f} min; outputs in {workdir}/ (tensorboard --logdir '
        f'{workdir})', flush=True)
  return preds
