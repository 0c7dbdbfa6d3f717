"""Task registry: config.task -> the function that runs it, `run(config, workdir)`.

Every task is reached through `python -m osteojax.main`; a new task adds one line here.
"""
from __future__ import annotations

import importlib
import os

import jax

from osteojax.data import io as dio
from osteojax.errors import ConfigError

TASKS = {
    'osteosim': 'osteojax.data.task',   # generate OsteoSim, print its summary and oracle
    'tp_swav': 'osteojax.diagnosis.pretrain',      # TP-SwAV pre-training (views from the texture pool)
    'swav': 'osteojax.diagnosis.pretrain',         # SwAV baseline (views from random crops)
    'mae': 'osteojax.diagnosis.pretrain_mae',      # MAE baseline: masked autoencoding, 3-D ViT
    'voco': 'osteojax.diagnosis.pretrain_voco',    # VoCo baseline: crop-position contrast, ResNet
    'swinmm': 'osteojax.diagnosis.pretrain_swinmm',  # SwinMM baseline: masked multi-view, Swin-T
    'alice': 'osteojax.diagnosis.pretrain_alice',  # Alice baseline: same-level pairs, nnFormer
    'finetune': 'osteojax.diagnosis.finetune',     # MoE multi-task fine-tuning + valid/test predictions
    'pipeline': 'osteojax.diagnosis.pipeline',     # make run: data -> TP-SwAV -> MoE fine-tune -> evaluate
    'unet': 'osteojax.align.segment',          # 2-D U-Net segmenter (annotation transfer), Dice
    'align': 'osteojax.align.train',     # DXA-MRI aligner: contrastive spatial encoders, BodySim
}


def run(config, workdir: str):
  """Check the config's choices (the task's check_config(config), where it has one), save the
  resolved config in workdir, then run config.task. A bad choice stops before the save, so it
  leaves an earlier run's config.json in that workdir as it was."""
  if config.task not in TASKS:
    raise ConfigError(f'unknown task {config.task!r}; known tasks: {", ".join(sorted(TASKS))}')
  task = importlib.import_module(TASKS[config.task])
  check = getattr(task, 'check_config', None)
  if check is not None:
    check(config)
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:        # one writer when several processes share the workdir
    dio.atomic_write_text(os.path.join(workdir, 'config.json'),
                          config.to_json_best_effort(indent=1))
  return task.run(config, workdir)
