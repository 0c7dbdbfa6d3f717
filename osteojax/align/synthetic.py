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
import SimpleITK as sitk

from osteojax.align.rigid import Rigid2D


def unit_rows(x):
  """Each row of x scaled to unit L2 norm (numpy; zero rows stay zero)."""
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
  tgt = unit_rows(field(grid_xy(hh, ww))).reshape(hh, ww, channels)
  src = field(transform.apply(grid_xy(h, w)))
  if noise:
    rng = np.random.default_rng([seed, 1])
    src = src + noise * np.std(src) * rng.normal(size=src.shape)
  src = unit_rows(src).reshape(h, w, channels)
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


# ------------------------------------------------------------------------------ image pairs
def blobs(shape, n: int, seed: int, sigma=(3.0, 10.0)) -> np.ndarray:
  """A smooth image: a sum of n random Gaussian blobs (sizes in pixels). [H, W] float32."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:shape[0], 0:shape[1]]
  img = np.zeros(shape)
  for _ in range(n):
    cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
    s = rng.uniform(*sigma)
    img += rng.uniform(0.5, 1.0) * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * s * s))
  return img.astype(np.float32)


def make_image_pair(src_hw, tgt_hw, transform_px: Rigid2D, spacing: float, blobs_n: int = 60,
                    noise: float = 0.02, seed: int = 0, sigma=(3.0, 10.0)):
  """(source [h, w], target [H, W]) float32 images of two 'modalities' with a known transform.

  target: blobs; source(p) = g(target(T(p))) + noise with g(v) = 1 - (2 v / max - 0.6)^2, a
  non-monotonic intensity map (no intensity-based similarity but MI applies), T the source ->
  target pixel transform; zero outside the target before g.
  """
  tgt = blobs(tgt_hw, blobs_n, seed, sigma)
  t_img = sitk.GetImageFromArray(tgt)
  t_img.SetSpacing((spacing, spacing))
  ref = sitk.Image(int(src_hw[1]), int(src_hw[0]), sitk.sitkFloat32)
  ref.SetSpacing((spacing, spacing))
  src = sitk.GetArrayFromImage(sitk.Resample(t_img, ref, transform_px.to_mm(spacing).to_sitk(),
                                             sitk.sitkLinear, 0.0))
  v = src / tgt.max()
  src = 1.0 - (2 * v - 0.6) ** 2
  src = src + np.random.default_rng([seed, 1]).normal(0, noise, src.shape)
  return src.astype(np.float32), tgt
