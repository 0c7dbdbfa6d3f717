"""The aligner's encoders: build from a config, load a trained run, embed scans, similarities."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from osteojax.align import correlation
from osteojax.models import spatial
from osteojax.train import pretrained


def build_model(config) -> spatial.Aligner:
  m = config.model
  return spatial.Aligner(m.encoder, tuple(m.widths), m.last_width, m.embed_dim)


def embed(model, variables, dxa, mri, batch_size: int = 32):
  """Unit-norm maps of all scans (eval mode): numpy [N, H', W', D], [N, h', w', D]."""
  fd = jax.jit(lambda x: model.apply(variables, x, method=model.embed_dxa))
  fm = jax.jit(lambda x: model.apply(variables, x, method=model.embed_mri))
  out_d = [np.asarray(fd(dxa[i:i + batch_size])) for i in range(0, len(dxa), batch_size)]
  out_m = [np.asarray(fm(mri[i:i + batch_size])) for i in range(0, len(mri), batch_size)]
  return np.concatenate(out_d), np.concatenate(out_m)


def similarity_all(dxa_maps, mri_maps, chunk: int = 64) -> np.ndarray:
  """[N, M] similarities of all DXA / MRI maps by FFT, in chunks of rows and columns."""
  f = jax.jit(correlation.similarity_matrix)
  rows = []
  for i in range(0, len(dxa_maps), chunk):
    rows.append(np.concatenate([np.asarray(f(dxa_maps[i:i + chunk], mri_maps[j:j + chunk]))
                                for j in range(0, len(mri_maps), chunk)], axis=1))
  return np.concatenate(rows, axis=0)


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


