"""Texture pools of a configured data set, ready for training.

`ensure_pool(config, split)` generates the OsteoSim data set of config.data (cached), builds
the texture pool of the ROIs of one split (cached by content and settings, resumable) and
returns a `PoolSet` that reads batches of pools [b, 5, D, H, W] from disk.
A real-data set made by tools/extract_rois.py works the same way through config.data.dir.
"""
from __future__ import annotations

import os

import numpy as np
import pandas as pd

from osteojax.data import osteosim, task as data_task
from osteojax.texture import builder
from osteojax.texture.settings import GLCMSettings


class PoolSet:
  """Pools of a list of ROIs; read(indices) -> float32 [len(indices), 5, D, H, W]."""

  def __init__(self, rows: pd.DataFrame, paths):
    self.rows = rows.reset_index(drop=True)
    self.paths = list(paths)
    first = np.load(self.paths[0], mmap_mode='r')
    self.shape = (len(self.paths),) + first.shape

  def __len__(self):
    return len(self.paths)

  def read(self, indices) -> np.ndarray:
    return np.stack([np.load(self.paths[i]) for i in indices]).astype(np.float32)


def texture_settings(config) -> GLCMSettings:
  t = config.get('texture', None)
  if t is None:
    return GLCMSettings()
  return GLCMSettings(binWidth=t.bin_width, kernelRadius=t.kernel_radius)


def ensure_pool(config, splits=('pretrain',), progress: bool = True) -> PoolSet:
  """The PoolSet of the ROIs of `splits` in config's data set (generated / built if needed)."""
  data_dir = data_task.data_dir(config)
  if config.data.dir and os.path.exists(os.path.join(data_dir, osteosim.MANIFEST)) \
      and not os.path.exists(os.path.join(data_dir, osteosim.INFO)):
    df = osteosim.read_manifest(data_dir)          # a real-data set from extract_rois
  else:
    df = data_task.generate(config, progress)
  rows = df[df.split.isin(splits)].reset_index(drop=True)
  if rows.empty:
    raise ValueError(f'no ROIs of split(s) {splits} in {data_dir}')
  pool_dir = os.path.join(data_dir, 'pool')
  entries = [dict(roi_id=r.roi_id, path=os.path.join(data_dir, r.path),
                  mask_path=os.path.join(data_dir, r.mask_path)) for r in rows.itertuples()]
  status = builder.build_pool(entries, pool_dir, texture_settings(config), progress=progress)
  if status:
    raise RuntimeError(f'texture pool of {data_dir} failed (see the errors above)')
  return PoolSet(rows, [os.path.join(pool_dir, f'{r}.npy') for r in rows.roi_id])
