"""Figures of an OsteoSim data set: vertebra mid-slices across BMD and sites, T-scores by maker."""
import os

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

from osteojax.data import osteosim  # noqa: E402
from osteojax.data import params as P  # noqa: E402

COLORS = {'hologic': 'tab:blue', 'ge_lunar': 'tab:orange', 'medix': 'tab:green'}


def plot_osteosim(data_dir: str, out: str, columns: int = 5) -> str:
  """Write the overview PNG of the data set in data_dir to `out`; returns out."""
  df = osteosim.read_manifest(data_dir)
  lab = df[df.split != 'pretrain']
  sites = sorted(lab.site.unique())
  fig = plt.figure(figsize=(2.0 * columns + 7.5, 2.1 * len(sites) + 0.6))
  gs = fig.add_gridspec(len(sites), columns + 3, width_ratios=[1] * columns + [0.25, 1.7, 1.7])
  for i, site in enumerate(sites):
    d = lab[lab.site == site].sort_values('vbmd')
    picks = d.iloc[np.linspace(0, len(d) - 1, min(columns, len(d))).astype(int)]
    for j, (_, r) in enumerate(picks.iterrows()):
      ax = fig.add_subplot(gs[i, j])
      vol = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(data_dir, r.path)))
      ax.imshow(vol[vol.shape[0] // 2], cmap='gray', vmin=-200, vmax=800)
      ax.set_title(f'{r.level} vBMD {r.vbmd:.0f}\nT {r.t_score:+.1f} {r.scanner}', fontsize=7,
                   color='crimson' if r.label == 1 else 'black')
      ax.set_xticks([]), ax.set_yticks([])
      if j == 0:
        ax.set_ylabel(f'site {site}\n({r.device})', fontsize=8)
  ax = fig.add_subplot(gs[:, columns + 1])
  bins = np.linspace(-6, 4, 41)
  for dev in P.DEVICE_NAMES:
    ax.hist(lab[f't_{dev}'], bins=bins, histtype='step', lw=1.5, color=COLORS[dev],
            label=f'{dev}: {100 * lab[f"label_{dev}"].astype(int).mean():.1f}% <= -2.5')
  ax.axvline(P.OSTEOPOROSIS_T, color='k', ls='--', lw=1)
  ax.set_xlabel('T-score (each maker, its own reference)')
  ax.set_ylabel('labeled vertebrae')
  ax.set_title('T-scores of the same vertebrae\non three DXA makers', fontsize=9)
  ax.legend(fontsize=7, loc='upper left')
  ax = fig.add_subplot(gs[:, columns + 2])
  th, tl = lab.t_hologic.to_numpy(), lab.t_ge_lunar.to_numpy()
  disagree = (th <= P.OSTEOPOROSIS_T) != (tl <= P.OSTEOPOROSIS_T)
  ax.scatter(th[~disagree], tl[~disagree], s=4, c='0.6', label='same label')
  ax.scatter(th[disagree], tl[disagree], s=8, c='crimson',
             label=f'labels differ ({100 * disagree.mean():.1f}%)')
  ax.axvline(P.OSTEOPOROSIS_T, color='k', ls='--', lw=1)
  ax.axhline(P.OSTEOPOROSIS_T, color='k', ls='--', lw=1)
  ax.set_xlabel('T-score, Hologic')
  ax.set_ylabel('T-score, GE Lunar')
  ax.set_title('Hologic vs GE Lunar', fontsize=9)
  ax.legend(fontsize=7, loc='upper left')
  fig.suptitle('OsteoSim (generated data): axial mid-slices by site, low to high vBMD '
               '(red: osteoporotic on the site device)', fontsize=10)
  fig.tight_layout()
  fig.savefig(out, dpi=110)
  plt.close(fig)
  return out
