"""Figure of a BodySim data set: example DXA / MRI pairs with keypoints, masks and the MRI field."""
from __future__ import annotations

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from osteojax.data import bodysim  # noqa: E402

KP_COLORS = ('tab:red', 'tab:orange', 'tab:blue', 'tab:cyan', 'lime')


def plot_pairs(data: dict, out: str, n: int = 4) -> str:
  """PNG sheet: for n subjects, DXA bone, DXA tissue (+ MRI field outline, masks), MRI fat, water.

  data: a load_pairs(...) dict. Keypoints are drawn in both images (same colour = same point).
  """
  n = min(n, len(data['ids']))
  fig, axes = plt.subplots(n, 4, figsize=(9.5, 4.3 * n), squeeze=False,
                           gridspec_kw=dict(width_ratios=[1, 1, 0.75, 0.75]))
  for i in range(n):
    dxa, mri = data['dxa'][i], data['mri'][i]
    kd, km = data['keypoints_dxa'][i], data['keypoints_mri'][i]
    m = data['matrix_mri_to_dxa'][i]
    h, w = mri.shape[:2]
    corners = bodysim.apply_transform(m, [[0, 0], [0, w - 1], [h - 1, w - 1], [h - 1, 0],
                                          [0, 0]])
    panels = [(dxa[..., 0], 'DXA bone', kd), (dxa[..., 1], 'DXA tissue', kd),
              (mri[..., 0], 'MRI fat', km), (mri[..., 1], 'MRI water', km)]
    for j, (img, title, kp) in enumerate(panels):
      ax = axes[i, j]
      ax.imshow(img, cmap='gray', vmin=0, vmax=np.percentile(img, 99.5))
      ax.scatter(kp[:, 1], kp[:, 0], c=KP_COLORS, s=14, edgecolors='k', linewidths=0.4)
      if j == 1:
        ax.plot(corners[:, 1], corners[:, 0], 'y-', lw=0.8)
        ax.contour(data['dxa_mask'][i], levels=[0.5, 1.5, 2.5], colors=['c', 'm', 'y'],
                   linewidths=0.5)
      if j == 3:
        ax.contour(data['mri_mask'][i], levels=[0.5, 1.5, 2.5], colors=['c', 'm', 'y'],
                   linewidths=0.5)
      ax.set_title(f'{data["ids"][i]} {title}' if j == 0 else title, fontsize=7)
      ax.set_xticks([]), ax.set_yticks([])
  fig.suptitle('BodySim (generated): keypoints hips red/orange, shoulders blue/cyan, S1 green;'
               '\nyellow box = MRI field on the DXA; contours spine / pelvis / pelvic cavity',
               fontsize=8)
  fig.tight_layout()
  fig.savefig(out, dpi=110)
  plt.close(fig)
  return out
