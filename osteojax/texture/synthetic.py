"""CT-like vertebral-body ROIs for texture benchmarks and tool tests (not the data generator).

A stand-in until the vertebra phantom generator's ROIs are plugged in: an ellipsoidal body
of trabecular bone (100-300 HU plus a plate-like pattern and scanner noise) inside a
cortical shell (600-1000 HU), surrounded by soft tissue (-100..60 HU); the mask is the body
(trabecular bone and shell).
"""

from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np


def ct_vertebra_roi(rng: np.random.Generator, shape: Sequence[int] = (32, 32, 32),
                    spacing: Sequence[float] = (1.0, 0.8, 0.8), noise_hu: float = 30.0
                    ) -> Tuple[np.ndarray, np.ndarray, Tuple[float, ...]]:
  """One synthetic ROI.

  rng: numpy Generator (the only source of randomness).  shape: [D, H, W] voxels.
  Returns (image [D, H, W] int16 HU, mask [D, H, W] uint8, spacing per array axis).
  """
  shape = np.asarray(shape)
  c = (shape - 1) / 2 + rng.uniform(-1, 1, 3)
  radii = shape * rng.uniform(0.36, 0.42, 3)
  idx = np.indices(tuple(shape)).astype(np.float64)
  rho = np.sqrt(sum(((idx[d] - c[d]) / radii[d]) ** 2 for d in range(3)))
  shell_t = 1.5 / radii.min()                          # ~1.5 voxel cortical shell
  img = rng.uniform(-100, 60, tuple(shape))             # soft tissue
  body = rho < 1.0
  img[body] = rng.uniform(600, 1000, int(body.sum()))   # cortical shell
  inner = rho < 1.0 - shell_t
  freq = rng.uniform(0.6, 1.2, 3)
  plates = np.sin(freq[0] * idx[0] + rng.uniform(0, 6)) * np.cos(freq[1] * idx[1]
                                                                  + freq[2] * idx[2])
  trab = 200 + 100 * plates + rng.normal(0, noise_hu, tuple(shape))
  img[inner] = np.clip(trab, 100, 300)[inner] + rng.normal(0, noise_hu / 3, int(inner.sum()))
  return np.round(img).astype(np.int16), body.astype(np.uint8), tuple(float(s) for s in spacing)
