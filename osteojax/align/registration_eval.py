"""Registration evaluation: keypoint transfer errors per method, the Table 1 analog, overlays.

Generic over the data: a `RegistrationPair` holds a source (MRI) and target (DXA) feature map
and/or image, and the keypoints of both in pixels; a method is any function pair -> Rigid2D
(source pixels -> target pixels). `run_methods` times each method on each pair and measures
the keypoint transfer error in cm; `keypoint_table` makes the rows of the paper's Table 1
(hip joints, S1, shoulder joints, median and mean +- sd over all keypoints, seconds per pair);
`table_markdown` renders them; `overlay_figure` draws examples like the paper's Fig. 5.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Sequence

import numpy as np

from osteojax.align.rigid import Rigid2D
from osteojax.evaluate import metrics

KEYPOINTS = ('hip_left', 'hip_right', 's1', 'shoulder_left', 'shoulder_right')
GROUPS = (('HJ', 'hip'), ('S1', 's1'), ('SJ', 'shoulder'))     # (column, name prefix)


@dataclasses.dataclass
class RegistrationPair:
  src_kp: np.ndarray                  # [K, 2] source (MRI) keypoints, pixels (x, y)
  tgt_kp: np.ndarray                  # [K, 2] target (DXA) keypoints, pixels
  src_map: np.ndarray | None = None   # [h, w, C] encoder map of the source
  tgt_map: np.ndarray | None = None   # [H, W, C]
  src_image: np.ndarray | None = None
  tgt_image: np.ndarray | None = None
  extra: Any = None                   # anything a method needs (e.g. the subject id)


def run_methods(pairs: Sequence[RegistrationPair], methods: dict[str, Callable],
                spacing_mm: float, warmup: bool = True):
  """Each method on each pair: -> (errors {name: [N, K] cm}, seconds {name: [N]},
  transforms {name: [Rigid2D] * N}). With `warmup`, each method first runs once on pairs[0]
  untimed (jit compilation is not a per-pair cost)."""
  errors, seconds, transforms = {}, {}, {}
  for name, f in methods.items():
    if warmup and len(pairs):
      f(pairs[0])
    e, s, ts = [], [], []
    for p in pairs:
      t0 = time.perf_counter()
      t = f(p)
      s.append(time.perf_counter() - t0)
      if not isinstance(t, Rigid2D):
        raise TypeError(f'method {name!r} returned {type(t).__name__}, not a Rigid2D')
      ts.append(t)
      e.append(metrics.keypoint_errors_cm(t.apply(p.src_kp), p.tgt_kp, spacing_mm))
    errors[name], seconds[name], transforms[name] = np.array(e), np.array(s), ts
  return errors, seconds, transforms


def keypoint_table(errors: dict, seconds: dict | None = None,
                   keypoints: Sequence[str] = KEYPOINTS, groups=GROUPS) -> list[dict]:
  """Rows of the Table 1 analog: per method, mean +- sd (cm) per keypoint group, median and
  mean +- sd over all keypoints, mean seconds per pair (when given)."""
  rows = []
  for name, e in errors.items():
    e = np.asarray(e, np.float64)
    if e.ndim != 2 or e.shape[1] != len(keypoints):
      raise ValueError(f'{name}: errors must be [pairs, {len(keypoints)}], got {e.shape}')
    row = dict(method=name, pairs=int(e.shape[0]))
    for col, prefix in groups:
      idx = [i for i, k in enumerate(keypoints) if k.startswith(prefix)]
      row[col] = metrics.error_summary(e[:, idx])
    row['all'] = metrics.error_summary(e)
    if seconds is not None and name in seconds:
      row['seconds_per_pair'] = float(np.mean(seconds[name]))
    rows.append(row)
  return rows


def table_markdown(rows: list[dict], groups=GROUPS) -> str:
  """The rows as a Markdown table (cm, mean +- sd; seconds per pair)."""
  cols = [g for g, _ in groups]
  head = '| Method | ' + ' | '.join(cols) + ' | Median (all) | Mean (all) | s / pair |'
  lines = [head, '|' + '---|' * (len(cols) + 4)]
  for r in rows:
    cells = [f"{r[c]['mean']:.2f} ± {r[c]['sd']:.2f}" for c in cols]
    secs = f"{r['seconds_per_pair']:.3f}" if 'seconds_per_pair' in r else '-'
    lines.append(f"| {r['method']} | " + ' | '.join(cells) +
                 f" | {r['all']['median']:.2f} | {r['all']['mean']:.2f} ± {r['all']['sd']:.2f}"
                 f" | {secs} |")
  return '\n'.join(lines)


def overlay_figure(path: str, pairs: Sequence[RegistrationPair], transforms: dict,
                   max_pairs: int = 3):
  """A PNG like the paper's Fig. 5: per pair, the MRI and DXA with their keypoints, then per
  method the MRI moved onto the DXA (red) over the DXA (grey), true DXA keypoints (green) and
  moved MRI keypoints (red). pairs need src_image and tgt_image ([H, W] or [H, W, C]; the
  first channel is drawn); transforms: {method: [Rigid2D per pair]} (source -> target px)."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  from osteojax.align import transfer

  pairs = list(pairs)[:max_pairs]
  names = list(transforms)
  fig, axes = plt.subplots(len(pairs), 2 + len(names),
                           figsize=(2.2 * (2 + len(names)), 4.5 * len(pairs)), squeeze=False)
  first = lambda a: np.asarray(a, np.float32) if np.ndim(a) == 2 else np.asarray(a)[..., 0]
  norm = lambda a: (a - a.min()) / max(float(np.ptp(a)), 1e-12)
  for i, p in enumerate(pairs):
    if p.src_image is None or p.tgt_image is None:
      raise ValueError('overlay_figure needs src_image and tgt_image in every pair')
    mri, dxa = norm(first(p.src_image)), norm(first(p.tgt_image))
    ax = axes[i]
    ax[0].imshow(mri, cmap='gray')
    ax[0].scatter(*np.asarray(p.src_kp).T, c='r', s=12)
    ax[0].set_title('MRI')
    ax[1].imshow(dxa, cmap='gray')
    ax[1].scatter(*np.asarray(p.tgt_kp).T, c='lime', s=12)
    ax[1].set_title('DXA')
    for j, name in enumerate(names):
      t = transforms[name][i]
      moved = transfer.image_to_target(mri, t, dxa.shape)
      rgb = np.stack([np.maximum(dxa * 0.6, moved), dxa * 0.6, dxa * 0.6], -1)
      ax[2 + j].imshow(np.clip(rgb, 0, 1))
      ax[2 + j].scatter(*np.asarray(p.tgt_kp).T, c='lime', s=12)
      ax[2 + j].scatter(*t.apply(p.src_kp).T, c='r', s=12, marker='x')
      ax[2 + j].set_title(name)
      ax[2 + j].set_xlim(-0.5, dxa.shape[1] - 0.5)   # moved points may fall outside the DXA
      ax[2 + j].set_ylim(dxa.shape[0] - 0.5, -0.5)
    for a in ax:
      a.axis('off')
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)
