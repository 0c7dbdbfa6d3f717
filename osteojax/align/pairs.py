"""The aligner's DXA / MRI pairs: where they live, which channels are used, how each scan is
normalised, input checks.

The pairs come from a BodySim folder (osteojax.data.bodysim) or, with config.data.manifest,
from your own files (osteojax.align.manifest: resampled to data.spacing_mm and placed on the
data.dxa_canvas / mri_canvas grids, by default BodySim's at data.scale). Training and retrieval
read them through `load`.
"""
from __future__ import annotations

import os

import numpy as np

from osteojax.data import bodysim
from osteojax.errors import ConfigError


# ------------------------------------------------------------------------------------ data
def data_dir(config) -> str:
  """config.data.dir, or a name made of the BodySim settings under data/."""
  if config.data.dir:
    return config.data.dir
  return os.path.join('data', f'bodysim_s{config.data.scale}_seed{config.data.seed}')


def spacing_mm(config) -> float:
  """The pixel spacing of the config's pairs (both modalities share it): data.spacing_mm, or
  BodySim's at data.scale."""
  return float(config.data.get('spacing_mm') or bodysim.geometry(config.data.scale)['spacing_mm'])


def canvases(config) -> tuple[tuple[int, int], tuple[int, int]]:
  """(DXA, MRI) image sizes (rows, cols): data.dxa_canvas / mri_canvas, or BodySim's."""
  g = bodysim.geometry(config.data.scale)
  return (tuple(config.data.get('dxa_canvas') or g['dxa_shape']),
          tuple(config.data.get('mri_canvas') or g['mri_shape']))


def load(config, split: str, limit: int | None = None, data_dir: str | None = None) -> dict:
  """One split of the config's pairs as arrays (bodysim.load_pairs' keys; no alignment truth
  from a manifest). data_dir: read this BodySim folder instead."""
  if config.data.get('manifest') and not data_dir:
    from osteojax.align import manifest
    dxa_canvas, mri_canvas = canvases(config)
    return manifest.load(config.data.manifest, split, config.model.dxa_channels,
                         config.model.mri_channels, spacing_mm(config), dxa_canvas, mri_canvas,
                         limit)
  return bodysim.load_pairs(data_dir or ensure_data(config, progress=False), split, limit)


def has_split(config, split: str) -> bool:
  """Whether the config's pairs hold any pair of `split`."""
  if config.data.get('manifest'):
    from osteojax.align import manifest
    df = manifest.read_manifest(config.data.manifest, config.model.dxa_channels,
                                config.model.mri_channels)
    return bool((df.split == split).any())
  return bodysim.split_size(ensure_data(config, progress=False), split) > 0


NORMALISE = ('minmax', 'none')


def normalise(x: np.ndarray, how: str) -> np.ndarray:
  """Per scan and channel: 'minmax' maps [min, max] to [0, 1] (the authors' normalise_channels),
  'none' leaves the values. x: [N, H, W, C]."""
  if how == 'none':
    return x
  if how != 'minmax':
    raise ConfigError(f'unknown normalisation {how!r}; known: {", ".join(NORMALISE)}')
  lo = x.min(axis=(1, 2), keepdims=True)
  hi = x.max(axis=(1, 2), keepdims=True)
  return ((x - lo) / (hi - lo + 1e-5)).astype(np.float32)


def ensure_data(config, progress: bool = True) -> str:
  """The BodySim folder of this config (the manifest's path when it reads one).

  An explicit config.data.dir that already holds a BodySim data set is used as it is (e.g. one
  made by tools/make_bodysim.py with other sizes); otherwise the folder is generated, or
  regenerated when it was made with other settings.
  """
  if config.data.get('manifest'):
    return config.data.manifest
  out = data_dir(config)
  marker = os.path.join(out, bodysim.MARKER)
  if config.data.dir and os.path.exists(marker):
    return out
  sizes = dict(config.data.sizes)
  if not bodysim.is_current(out, config.data.scale, config.data.seed, sizes):
    print(f'[align] generating BodySim in {out}', flush=True)
    bodysim.generate(out, config.data.scale, config.data.seed, sizes, config.data.workers,
                     progress=progress)
  return out


def channel_indices(names, known, modality):
  """Config channel names -> indices into the stored channels; clear error on unknown names."""
  names = tuple(names)
  if not names:
    raise ConfigError(f'no {modality} channels selected (choose from {", ".join(known)})')
  bad = [n for n in names if n not in known]
  if bad:
    raise ConfigError(f'unknown {modality} channel(s) {bad}; known: {", ".join(known)}')
  return [known.index(n) for n in names]


def select_channels(data: dict, config) -> tuple[np.ndarray, np.ndarray]:
  """(dxa [N, H, W, Cd], mri [N, h, w, Cm]) with the config's channels, float32, normalised
  per scan as config.data.normalise says ('none' for runs written before the setting)."""
  di = channel_indices(config.model.dxa_channels, data.get('dxa_channels', bodysim.DXA_CHANNELS),
                       'DXA')
  mi = channel_indices(config.model.mri_channels, data.get('mri_channels', bodysim.MRI_CHANNELS),
                       'MRI')
  how = config.data.get('normalise', 'none')
  return (normalise(np.ascontiguousarray(data['dxa'][..., di]), how),
          normalise(np.ascontiguousarray(data['mri'][..., mi]), how))


def check_inputs(dxa, mri, dxa_channels: int, mri_channels: int):
  """Bad input -> ValueError with one clear line: shapes, channel counts, NaNs, empty."""
  for name, x, c in (('DXA', dxa, dxa_channels), ('MRI', mri, mri_channels)):
    if x.ndim != 4:
      raise ValueError(f'{name} scans must be [N, H, W, C], got shape {x.shape}')
    if x.shape[0] == 0:
      raise ValueError(f'empty batch: no {name} scans')
    if x.shape[-1] != c:
      raise ValueError(f'{name} scans have {x.shape[-1]} channels; the encoder expects {c}')
    n_bad = int(np.size(x) - np.isfinite(x).sum())
    if n_bad:
      raise ValueError(f'{name} scans contain {n_bad} NaN or infinite values')
  if dxa.shape[0] != mri.shape[0]:
    raise ValueError(f'{dxa.shape[0]} DXA scans but {mri.shape[0]} MRI scans')
  if mri.shape[1] > dxa.shape[1] or mri.shape[2] > dxa.shape[2]:
    raise ValueError(f'the MRI field {mri.shape[1:3]} must fit inside the DXA field '
                     f'{dxa.shape[1:3]} (same pixel spacing)')


