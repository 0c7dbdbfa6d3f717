"""Augmentation of one CT volume, shared by pre-training and fine-tuning (JAX, jit-able).

The osteoporosis label measures bone density, and the network reads density from the original
channel's intensity: an intensity perturbation larger than what separates the classes erases
the signal (the trabecular HU of the two classes differ by ~85 HU). So the intensity
augmentation is expressed in HU and bounded by the scanner variation the generator itself
models (`params.SCANNERS`): an HU offset within half the span of the scanners' offsets and a
gain on bone (HU > 0) within half the span of their kV gains, i.e. a perturbation no larger
than the difference between two of the data set's own scanners. `INTENSITY_MODES` names the
choices compared on the validation split (docs/diagnosis.md, "Recipe choices"):

  'none'     flips only;
  'offset'   + an HU offset, U(-o, o), o = half the scanners' offset span (18 HU);
  'scanner'  + that offset and a bone gain U(1 - g, 1 + g), g = half the kV-gain span (0.07);
  'legacy'   the first build's scale U(0.9, 1.1) and shift U(-0.1, 0.1) of the normalised
             input (a shift of up to +-150 HU), kept as the ablation that shows the damage.

A random translation by whole voxels (`shift`, zero-filled: the volume outside the vertebra
mask is zero already) moves the vertebra in its ROI and leaves every intensity, and so the
density, as it was.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from osteojax.data import params as P
from osteojax.errors import ConfigError

INTENSITY_MODES = ('none', 'offset', 'scanner', 'legacy')
LEGACY_INTENSITY = 0.1


def scanner_ranges() -> tuple[float, float]:
  """(HU offset bound, relative bone-gain bound): half the spans of params.SCANNERS."""
  offsets = [s['offset'] for s in P.SCANNERS.values()]
  gains = [s['kv_gain'] for s in P.SCANNERS.values()]
  return (max(offsets) - min(offsets)) / 2, (max(gains) - min(gains)) / 2


def intensity_bounds(mode: str) -> tuple[float, float, float]:
  """(hu_offset, hu_gain, legacy) bounds of an INTENSITY_MODES name."""
  if mode not in INTENSITY_MODES:
    raise ConfigError(f'unknown intensity augmentation {mode!r}; known: '
                      f'{", ".join(INTENSITY_MODES)}')
  offset, gain = scanner_ranges()
  return {'none': (0.0, 0.0, 0.0), 'offset': (offset, 0.0, 0.0),
          'scanner': (offset, gain, 0.0), 'legacy': (0.0, 0.0, LEGACY_INTENSITY)}[mode]


def flip(x, key, flip_prob: float):
  """Random flips of x [D, H, W] on each axis with probability flip_prob."""
  flips = jax.random.bernoulli(key, flip_prob, (3,))
  for ax in range(3):
    x = jnp.where(flips[ax], jnp.flip(x, ax), x)
  return x


def shift(x, key, max_vox: int):
  """x [D, H, W] translated by a random whole number of voxels in [-max_vox, max_vox] on each
  axis, the uncovered border filled with zeros (max_vox 0: x unchanged)."""
  if max_vox == 0:
    return x
  m = int(max_vox)
  start = jax.random.randint(key, (3,), 0, 2 * m + 1)
  padded = jnp.pad(x, m)
  return jax.lax.dynamic_slice(padded, start, x.shape)


def perturb_intensity(x, key, mode: str, hu_window: tuple[float, float]):
  """The intensity perturbation `mode` of a normalised original volume x [D, H, W].

  x is the pool's original channel, (clip(HU, lo, hi) - lo) / (hi - lo) with
  hu_window = (lo, hi) (texture.pool.HU_WINDOW); the result is clipped to the same window.
  Background (exact zeros: outside the vertebra mask) stays zero.
  """
  offset, gain, legacy = intensity_bounds(mode)
  if offset == gain == legacy == 0:
    return x
  ko, kg = jax.random.split(key)
  u_o = jax.random.uniform(ko, (), minval=-1, maxval=1)
  u_g = jax.random.uniform(kg, (), minval=-1, maxval=1)
  if legacy:
    y = x * (1 + legacy * u_g) + legacy * u_o
  else:
    lo, hi = hu_window
    hu = x * (hi - lo) + lo
    hu = hu + gain * u_g * jnp.maximum(hu, 0.0) + offset * u_o
    y = (jnp.clip(hu, lo, hi) - lo) / (hi - lo)
  return jnp.where(x != 0, y, 0.0)


def augment_original(x, key, flip_prob: float, intensity: str, hu_window, shift_vox: int = 0):
  """Flips, the intensity perturbation and (shift_vox > 0) a random translation of a normalised
  original volume x [D, H, W]."""
  kf, ki = jax.random.split(key)
  x = perturb_intensity(flip(x, kf, flip_prob), ki, intensity, hu_window)
  if shift_vox:   # its own key, so that shift_vox=0 draws the flips and intensities as before
    x = shift(x, jax.random.fold_in(key, 1), shift_vox)
  return x
