"""Task 'osteosim': generate (or reuse) the OsteoSim data set and report it."""
from __future__ import annotations

import json
import os

from osteojax.data import cohort, figures, osteosim, report
from osteojax.data import params as P


def geometry_from_config(config) -> P.RoiGeometry:
  return P.RoiGeometry(shape=tuple(config.data.roi_shape), spacing_mm=config.data.spacing_mm,
                       supersample=config.data.supersample)


def data_dir(config) -> str:
  """Where the data set of this config lives: config.data.dir, or a name made of its settings."""
  if config.data.dir:
    return config.data.dir
  shape = 'x'.join(str(s) for s in config.data.roi_shape)
  return os.path.join('data',
                      f'osteosim_s{config.data.scale:g}_seed{config.data.seed}_{shape}')


def run(config, workdir: str):
  """Generate the data set of config.data (cached), print and save its summary."""
  out = data_dir(config)
  geometry = geometry_from_config(config)
  cached = osteosim.is_current(out, config.data.scale, config.data.seed, geometry)
  print(f'[osteosim] {"reusing" if cached else "generating"} {out} '
        f'(scale {config.data.scale}, seed {config.data.seed}, ROI {geometry.shape} '
        f'at {geometry.spacing_mm} mm)', flush=True)
  df = osteosim.generate(out, config.data.scale, config.data.seed, geometry,
                         workers=config.data.workers)
  with open(os.path.join(out, osteosim.INFO)) as f:
    info = json.load(f)
  full = cohort.sample_cohort(1.0, config.data.seed) if config.data.scale < 1 else None
  text = report.summary_markdown(df, info, full)
  print(text, flush=True)
  with open(os.path.join(workdir, 'osteosim_summary.md'), 'w') as f:
    f.write(text)
  png = figures.plot_osteosim(out, os.path.join(workdir, 'osteosim.png'))
  print(f'[osteosim] summary: {workdir}/osteosim_summary.md, figure: {png}', flush=True)
  return df
