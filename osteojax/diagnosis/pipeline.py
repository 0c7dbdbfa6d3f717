"""Task 'pipeline': the whole vertical slice, one stage after another in one workdir.

  data      generate (or reuse) OsteoSim, print its summary and oracle     <workdir>/data
  pretrain  TP-SwAV pre-training on the unlabeled vertebrae                 <workdir>/pretrain
  finetune  MoE + unified-loss fine-tuning from that encoder, evaluated    <workdir>/finetune
            on valid/test: the per-site table, ROC curves, predictions
  compare   the model beside what a clinician would use instead (the L1    <workdir>/compare
            trabecular HU rules, radiomics + logistic regression) and the
            ceilings (the oracle, the CT-only oracle, the density-reader
            oracle) on the same test split:
            tables and overlaid ROC curves (osteojax/diagnosis/baselines.py, cached)

The baselines need the data alone, so on one process they run in a background thread while the
model trains (config.compare.background; their progress lines interleave with training's): they
fill the cores that compilation and the host side of training leave idle.

Each stage is an ordinary task (osteojax/tasks.py) with its own config section (config.pretrain,
config.finetune); config.data is shared by all of them. Every stage caches or resumes, so a
second run (or a run after an interruption) redoes only what is missing.
"""
from __future__ import annotations

import os
import threading
import time

import jax

from osteojax import tasks
from osteojax.diagnosis import baselines
from osteojax.data import io as dio
from osteojax.data import task as data_task
from osteojax.evaluate import diagnosis

MODEL = 'tpswav_unified_moe'


def _baselines(data_dir: str, workdir: str, ct_only_patients: int,
               ridge_score: str = 't') -> dict:
  return baselines.run_baselines(data_dir, os.path.join(workdir, 'baselines'), report=False,
                                 progress=True, ct_only_patients=ct_only_patients,
                                 ridge_score=ridge_score)


class _Background:
  """fn(*args) in a daemon thread; result() returns its value or raises its exception. A
  daemon thread: a failed or interrupted training run exits without waiting for it."""

  def __init__(self, fn, *args):
    self._out, self._err = None, None

    def target():
      try:
        self._out = fn(*args)
      except BaseException as e:      # re-raised in the caller by result()
        self._err = e

    self._thread = threading.Thread(target=target, name='baselines', daemon=True)
    self._thread.start()

  def result(self):
    self._thread.join()
    if self._err is not None:
      raise self._err
    return self._out


def compare(preds, data_dir: str, workdir: str, ct_only_patients: int = 20000,
            rows: dict | None = None, ridge_score: str = 't') -> dict:
  """The model beside the baselines and oracles on the same split: <workdir>/compare.

  rows: the baselines' predictions if already computed (else run_baselines runs here, the ridge
  row read out as `ridge_score`).
  """
  rows = _baselines(data_dir, workdir, ct_only_patients, ridge_score) if rows is None else rows
  models = {MODEL: preds, **rows}
  out = os.path.join(workdir, 'compare')
  summary = diagnosis.write_report(models, out, base=MODEL, deterministic=tuple(rows))
  text = '\n\n'.join(f'{level} {metric.upper()} (test split; threshold from validation):\n\n'
                      + diagnosis.compact_table(summary, metric, level)
                      for level in ('vertebra',) for metric in ('auc', 'f1', 'f1_f1thr'))
  dio.atomic_write_text(os.path.join(out, 'compact.md'), text + '\n')
  print(text, flush=True)
  print(f'[pipeline] model vs baselines and oracles: {out}/ (results.md, roc_vertebra.png, '
        'roc_patient.png)', flush=True)
  return summary


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
  ft = stage_config(config, 'finetune')
  with ft.unlocked():
    ft.init.checkpoint = os.path.join(workdir, 'pretrain')
  cmp = config.get('compare', {})
  patients = cmp.get('ct_only_patients', 20000)
  data_dir = data_task.data_dir(ft)
  ridge = baselines.ridge_score_for(ft.score)
  background = None
  if cmp.get('background', True) and jax.process_count() == 1:
    background = _Background(_baselines, data_dir, workdir, patients, ridge)
  tasks.run(stage_config(config, 'pretrain'), os.path.join(workdir, 'pretrain'))
  preds = tasks.run(ft, os.path.join(workdir, 'finetune'))
  compare(preds, data_dir, workdir, patients, background.result() if background else None,
          ridge)
  print(f'[pipeline] data -> TP-SwAV pre-training -> MoE fine-tuning -> evaluation in '
        f'{(time.time() - t0) / 60:.1f} min; outputs in {workdir}/ (tensorboard --logdir '
        f'{workdir})', flush=True)
  return preds
