"""The aligner's encoders: build from a config, load a trained run, embed scans, similarities."""
from __future__ import annotations

import functools
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np

from osteojax.align import correlation, pairs
from osteojax.models import spatial
from osteojax.train import pretrained

# The paper's encoder at 2.2 mm: three poolings, cells of 8 px = 17.6 mm, receptive field 68 px
PAPER_CELL_MM = 8 * 2.2
PAPER_RF_MM = spatial.receptive_field(3, 3) * 2.2


def pools(config) -> int:
  """Max-poolings of the encoder: config.model.pools, or for 'auto' (and configs written before
  the setting) the count whose cell size at the data's pixel spacing is nearest the paper's
  17.6 mm, at most one per stage."""
  p = config.model.get('pools', 'auto')
  if p != 'auto':
    return int(p)
  stages = len(config.model.widths)
  return int(min(max(round(math.log2(PAPER_CELL_MM / pairs.spacing_mm(config))), 0), stages))


def stride(config) -> int:
  """Image pixels per map cell."""
  return 2 ** pools(config) if config.model.encoder == 'spatial' else 1


def scale_summary(config) -> dict:
  """Cell size and receptive field of the config's encoder, in pixels and mm."""
  s, k = pairs.spacing_mm(config), pools(config)
  rf = spatial.receptive_field(len(config.model.widths), k)
  return dict(spacing_mm=s, pools=k, stride_px=2 ** k, cell_mm=2 ** k * s,
              receptive_field_px=rf, receptive_field_mm=rf * s)


def build_model(config) -> spatial.Aligner:
  m = config.model
  return spatial.Aligner(m.encoder, tuple(m.widths), m.last_width, m.embed_dim,
                         pools=pools(config))


@functools.partial(jax.jit, static_argnums=(0, 3))
def _apply(model, variables, x, method: str):
  # one compiled function per model, method and shape, the weights an argument: evaluating
  # during training or on every pair of a table does not compile again
  return model.apply(variables, x, method=getattr(model, method))


def embed(model, variables, dxa, mri, batch_size: int = 32):
  """Unit-norm maps of all scans (eval mode): numpy [N, H', W', D], [N, h', w', D]."""
  out = []
  for x, method in ((dxa, 'embed_dxa'), (mri, 'embed_mri')):
    out.append(np.concatenate([np.asarray(_apply(model, variables, x[i:i + batch_size], method))
                               for i in range(0, len(x), batch_size)]))
  return out[0], out[1]


def similarity_all(dxa_maps, mri_maps, chunk: int = 64) -> np.ndarray:
  """[N, M] similarities of all DXA / MRI maps by FFT, in chunks of rows and columns."""
  f = jax.jit(correlation.similarity_matrix)
  rows = []
  for i in range(0, len(dxa_maps), chunk):
    rows.append(np.concatenate([np.asarray(f(dxa_maps[i:i + chunk], mri_maps[j:j + chunk]))
                                for j in range(0, len(mri_maps), chunk)], axis=1))
  return np.concatenate(rows, axis=0)


STARTS_FILE = 'starts.json'    # a run of several starts: each start and the choice (train.py)


def trained_seed(workdir: str, config) -> int:
  """The seed workdir's run trained with: the chosen start's when it had several
  (config.starts > 1), else config.seed."""
  record = os.path.join(workdir, STARTS_FILE)
  if not os.path.exists(record):
    return config.seed
  with open(record, encoding='utf-8') as f:
    return int(json.load(f)['chosen_seed'])


def load_encoders(workdir: str, step: int | None = None):
  """(model, variables {'params', 'batch_stats'}, config, step) of a trained aligner in workdir.

  Reads <workdir>/config.json and the checkpoint chosen on validation (<workdir>/best) when
  the run kept one, else the newest (or the given `step`); OsteoDataError when either is
  missing. Use with `embed(model, variables, dxa, mri)` or
  model.apply(variables, x, method=model.embed_dxa / embed_mri).
  """
  config = pretrained.read_config(workdir, ('align',))
  variables, got = pretrained.load_variables(workdir, step, use_best=step is None)
  model = build_model(config)
  return model, jax.tree_util.tree_map(jnp.asarray, variables), config, got


