"""Summary of an OsteoSim data set: counts per site and split, prevalence per device, oracle."""
from __future__ import annotations

import numpy as np
import pandas as pd

from osteojax.data import oracle
from osteojax.data import params as P
from osteojax.evaluate import metrics


def counts_table(df: pd.DataFrame) -> pd.DataFrame:
  """Patients and vertebrae per site and split (pretrain = unlabeled vertebrae)."""
  g = df.groupby(['site', 'split'])
  t = pd.DataFrame(dict(patients=g.patient_id.nunique(), vertebrae=g.size())).reset_index()
  order = {s: i for i, s in enumerate(('train', 'valid', 'test', 'pretrain'))}
  return t.sort_values(['site', 'split'], key=lambda c: c.map(order) if c.name == 'split'
                       else c).reset_index(drop=True)


def prevalence_table(df: pd.DataFrame) -> pd.DataFrame:
  """Osteoporosis prevalence (% of labeled vertebrae, and of patients) on each maker, per site.

  The site's own device gives its training label; the other two show how the makers disagree.
  """
  lab = df[df.split != 'pretrain']
  rows = []
  for site, d in lab.groupby('site'):
    row = dict(site=site, device=d.device.iloc[0], vertebrae=len(d))
    for dev in P.DEVICE_NAMES:
      y = d[f'label_{dev}'].astype(int)
      row[f'{dev} vert %'] = 100 * y.mean()
      row[f'{dev} patient %'] = 100 * y.groupby(d.patient_id).max().mean()
    rows.append(row)
  return pd.DataFrame(rows)


def oracle_table(df: pd.DataFrame, split: str = 'test') -> pd.DataFrame:
  """Oracle AUC and F1 per site on `split`, vertebra and patient level (site's own device).

  F1 is the best over thresholds on the same data: an upper bound, as a ceiling should be.
  """
  rows = []
  for site, d in df[df.split == split].groupby('site'):
    vert, pat = oracle.oracle_scores(d)
    y = d.label.astype(int).to_numpy()
    yp = d.groupby('patient_id', sort=True).label.max().astype(int).reindex(pat.index)
    rows.append(dict(site=site, device=d.device.iloc[0], vertebrae=len(d),
                     positives=int(y.sum()),
                     vert_auc=metrics.auc(y, vert), vert_f1=metrics.best_f1(y, vert)[0],
                     patients=len(pat), patient_auc=metrics.auc(yp, pat.to_numpy()),
                     patient_f1=metrics.best_f1(yp, pat.to_numpy())[0]))
  return pd.DataFrame(rows)


def disagreement(df: pd.DataFrame) -> dict:
  """Fraction of labeled vertebrae whose label differs between two makers (all pairs)."""
  lab = df[df.split != 'pretrain']
  out = {}
  names = P.DEVICE_NAMES
  for i, a in enumerate(names):
    for b in names[i + 1:]:
      out[f'{a} vs {b}'] = float(np.mean(lab[f'label_{a}'].astype(int)
                                         != lab[f'label_{b}'].astype(int)))
  return out


def to_markdown(t: pd.DataFrame, floatfmt: str = '.1f') -> str:
  """A pipe table without extra dependencies."""
  cols = list(t.columns)
  fmt = lambda v: (format(v, floatfmt) if isinstance(v, (float, np.floating)) else str(v))
  lines = ['| ' + ' | '.join(cols) + ' |', '|' + '---|' * len(cols)]
  lines += ['| ' + ' | '.join(fmt(v) for v in row) + ' |' for row in t.itertuples(index=False)]
  return '\n'.join(lines)


def summary_markdown(df: pd.DataFrame, info: dict | None = None,
                     full: pd.DataFrame | None = None) -> str:
  """The whole summary as Markdown: counts, prevalence per maker, disagreement, oracle.

  full: optionally the same cohort at the paper's size (truth only, no images), whose oracle
  table is stable where a small generated test split has few positives.
  """
  parts = []
  if info:
    labeled = (f" (labeled splits: {info['labeled_scale']})" if info.get('labeled_scale')
               else '')
    parts.append(f"OsteoSim (generated data, not clinical): scale {info.get('scale')}{labeled}, "
                 f"seed {info.get('seed')}, parameters {info.get('params_digest')}, "
                 f"{info.get('n_rois')} ROIs.")
  ct = counts_table(df)
  wide = ct.pivot(index='site', columns='split', values=['patients', 'vertebrae']).fillna(0)
  wide.columns = [f'{a} {b}' for a, b in wide.columns]
  order = [f'{a} {b}' for a in ('patients', 'vertebrae')
           for b in ('train', 'valid', 'test', 'pretrain') if f'{a} {b}' in wide.columns]
  wide = wide[order].astype(int).reset_index()
  parts += ['### Patients and vertebrae per site and split', to_markdown(wide)]
  parts += ['### Osteoporosis prevalence per DXA maker (labeled vertebrae; T <= -2.5)',
            to_markdown(prevalence_table(df))]
  dis = disagreement(df)
  parts += ['Label disagreement between makers (labeled vertebrae): '
            + ', '.join(f'{k} {100 * v:.1f}%' for k, v in dis.items())]
  parts += ['### Oracle ceiling on the test split (site device labels; F1 = best threshold)',
            to_markdown(oracle_table(df), '.3f')]
  if full is not None:
    parts += ['### Oracle ceiling on the full-size cohort of Table 1 (truth only, same '
              'generator and seed; test split)', to_markdown(oracle_table(full), '.3f')]
  return '\n\n'.join(parts) + '\n'
