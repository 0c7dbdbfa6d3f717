"""Trained weights from a run folder, whatever task wrote them: its config and its variables.

Every consumer of a trained network goes through here: fine-tuning loads a pre-trained encoder,
the linear probe a pre-training run, the aligner's evaluation and tools/register.py the DXA / MRI
encoders. Variables are read from the orbax checkpoint without a template (no model, no
optimiser state), so loading does not depend on how the run was optimised.
"""
from __future__ import annotations

import json
import os

import ml_collections

from osteojax.data.io import OsteoDataError
from osteojax.train import lib


def read_config(workdir: str, tasks: tuple[str, ...] | None = None) -> ml_collections.ConfigDict:
  """<workdir>/config.json; OsteoDataError when it is missing or its task is not in `tasks`."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise OsteoDataError(workdir, 'no config.json: not a run folder')
  with open(path, encoding='utf-8') as f:
    config = ml_collections.ConfigDict(json.load(f))
  if tasks is not None and config.get('task') not in tasks:
    raise OsteoDataError(path, f'task is {config.get("task")!r}, not {" or ".join(tasks)}')
  return config


def load_variables(workdir: str, step: int | None = None, use_best: bool = False):
  """({'params', 'batch_stats'}, step) of workdir's newest readable checkpoint (or `step`).

  use_best: read <workdir>/best (the checkpoint chosen on validation) when it holds one.
  OsteoDataError when there is no readable checkpoint.
  """
  folder = workdir
  if use_best and step is None and os.path.isdir(os.path.join(workdir, 'best', 'checkpoints')):
    folder = os.path.join(workdir, 'best')
  ck = lib.Checkpoints(folder, this_process_only=True)   # read by one process, or by all
  try:
    variables, got = ck.restore_variables(step)
    if not got:
      raise OsteoDataError(folder, 'no readable checkpoint in checkpoints/' if ck.steps()
                           else 'no checkpoint in checkpoints/')
  except FileNotFoundError as e:
    raise OsteoDataError(folder, str(e)) from None
  finally:
    ck.close()
  return variables, got


def load_encoder(workdir: str, step: int | None = None, name: str = 'encoder'):
  """(config, {'params', 'batch_stats'} of the sub-module `name`, step) of a trained run."""
  config = read_config(workdir)
  variables, got = load_variables(workdir, step)
  if name not in variables['params']:
    raise OsteoDataError(workdir, f'its checkpoint has no {name!r} module '
                                  f'(has {", ".join(sorted(variables["params"]))})')
  return config, {'params': variables['params'][name],
                  'batch_stats': variables['batch_stats'].get(name, {})}, got
