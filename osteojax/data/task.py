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
  lscale = labeled_scale(config)
  labeled = f'_l{lscale:g}' if lscale is not None and lscale != config.data.scale else ''
  return os.path.join('data', f'osteosim_{cohort_name(config)}_s{config.data.scale:g}{labeled}'
                              f'_seed{config.data.seed}_{shape}')


def labeled_scale(config):
  """config.data.labeled_scale, or None where the config has none (then: data.scale)."""
  return config.data.get('labeled_scale', None)


def cohort_name(config) -> str:
  """config.data.cohort ('paper' | 'population'); configs saved before it existed: population."""
  return cohort.check_cohort(config.data.get('cohort', 'population'))


def generate(config, progress: bool = True):
  """Generate (or reuse) the OsteoSim data set of config.data; returns its manifest."""
  return osteosim.generate(data_dir(config), config.data.scale, config.data.seed,
                           geometry_from_config(config), config.data.workers,
                           progress=progress, labeled_scale=labeled_scale(config),
                           cohort_name=cohort_name(config))


def run(config, workdir: str):
  """Generate the data set of config.data (cached), print and save its summary."""
  out = data_dir(config)
  geometry = geometry_from_config(config)
  lscale = labeled_scale(config)
  cached = osteosim.is_current(out, config.data.scale, config.data.seed, geometry, lscale,
                               cohort_name(config))
  print(f'[osteosim] {"reusing" if cached else "generating"} {out} '
        f'({cohort_name(config)} cohort, scale {config.data.scale}'
        f'{"" if lscale is None else f", labeled scale {lscale}"}, seed {config.data.seed}, '
        f'ROI {geometry.shape} at {geometry.spacing_mm} mm)', flush=True)
  df = generate(config)
  with open(os.path.join(out, osteosim.INFO), encoding='utf-8') as f:
    info = json.load(f)
  full = (cohort.sample_cohort(1.0, config.data.seed, cohort=cohort_name(config))
          if config.data.scale < 1 else None)
  text = report.summary_markdown(df, info, full)
  print(text, flush=True)
  with open(os.path.join(workdir, 'osteosim_summary.md'), 'w', encoding='utf-8') as f:
    f.write(text)
  png = figures.plot_osteosim(out, os.path.join(workdir, 'osteosim.png'))
  print(f'[osteosim] summary: {workdir}/osteosim_summary.md, figure: {png}', flush=True)
  return df
