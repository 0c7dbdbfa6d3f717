"""Generated feature-map pairs with a known rigid transform, for tests and benchmarks.

A smooth random C-channel field on the plane, f_c(p) = sum_k a_ck cos(w_k . p + phi_ck) with
random frequencies w_k ~ N(0, 1 / length^2) (correlation length `length` in map cells),
is sampled on the target grid (target map) and at T(u) for every source cell u (source map),
then per-location L2-normalised; noise is added to the source before normalising. The source
map is then exactly the target field seen through the transform T (source -> target), with no
interpolation error, so a registration can be scored against T itself. These maps stand in
for an encoder's output; they say nothing about how well trained encoders will do.
"""
from __future__ import annotations

import numpy as np

from osteojax.align.rigid import Rigid2D


def _normalise(x):
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def grid_xy(h: int, w: int) -> np.ndarray:
  """(x, y) of every cell of an [h, w] map, row-major: [h * w, 2]."""
  y, x = np.mgrid[0:h, 0:w]
  return np.stack([x.ravel(), y.ravel()], -1).astype(np.float64)


class RandomField:
  """A smooth random vector field f: (x, y) -> R^C (random Fourier features)."""

  def __init__(self, channels: int, length: float, seed: int, terms: int = 64):
    rng = np.random.default_rng(seed)
    self.freq = rng.normal(0, 1.0 / length, (terms, 2))
    self.phase = rng.uniform(0, 2 * np.pi, (channels, terms))
    self.amp = rng.normal(0, 1.0, (channels, terms)) / np.sqrt(terms)

  def __call__(self, xy) -> np.ndarray:
    """xy: [..., 2] -> [..., C] float64."""
    xy = np.asarray(xy, np.float64)
    arg = (xy @ self.freq.T)[..., None, :] + self.phase            # [..., C, K]
    return np.sum(self.amp * np.cos(arg), -1)


def make_pair(src_hw, tgt_hw, transform: Rigid2D, channels: int = 16, length: float = 2.0,
              noise: float = 0.0, seed: int = 0):
  """(source map [h, w, C], target map [H, W, C]) float32, L2-normalised per location.

  source(u) = normalise(f(transform(u)) + noise), target(v) = normalise(f(v)).
  """
  field = RandomField(channels, length, seed)
  (h, w), (hh, ww) = src_hw, tgt_hw
  tgt = _normalise(field(grid_xy(hh, ww))).reshape(hh, ww, channels)
  src = field(transform.apply(grid_xy(h, w)))
  if noise:
    rng = np.random.default_rng([seed, 1])
    src = src + noise * np.std(src) * rng.normal(size=src.shape)
  src = _normalise(src).reshape(h, w, channels)
  return src.astype(np.float32), tgt.astype(np.float32)


def random_transform(rng, src_hw, tgt_hw, max_angle: float, margin: float = 0.0) -> Rigid2D:
  """A rigid map placing the source grid inside the target grid (source centre -> a random
  point of the target with `margin` cells to spare), rotated by up to +-max_angle radians."""
  (h, w), (hh, ww) = src_hw, tgt_hw
  c = np.array([(w - 1) / 2, (h - 1) / 2])
  room = np.array([(ww - w) / 2 - margin, (hh - h) / 2 - margin])
  if (room < 0).any():
    raise ValueError(f'a {src_hw} source does not fit in a {tgt_hw} target with margin {margin}')
  dest = np.array([(ww - 1) / 2, (hh - 1) / 2]) + rng.uniform(-1, 1, 2) * room
  return Rigid2D(rng.uniform(-max_angle, max_angle), tuple(dest - c), tuple(c))
