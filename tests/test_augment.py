"""Intensity augmentation: bounded in HU by the generator's scanners, background kept, modes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from osteojax.data import augment
from osteojax.texture import pool

# params.SCANNERS written out: offsets -15..+21 HU, kV gains 1.00..1.14 (DATA_FACTS §4, §8).
OFFSET_BOUND, GAIN_BOUND = (21 - -15) / 2, (1.14 - 1.00) / 2


def _volume():
  hu = np.linspace(-150, 900, 6 * 6 * 6).reshape(6, 6, 6).astype(np.float32)
  x = (np.clip(hu, *pool.HU_WINDOW) - pool.HU_WINDOW[0]) / np.diff(pool.HU_WINDOW)[0]
  x[0] = 0.0                                                   # background slab
  return hu, jnp.asarray(x)


def _to_hu(x):
  lo, hi = pool.HU_WINDOW
  return np.asarray(x) * (hi - lo) + lo


def test_scanner_ranges_come_from_params():
  offset, gain = augment.scanner_ranges()
  assert offset == pytest.approx(OFFSET_BOUND) and gain == pytest.approx(GAIN_BOUND)


@pytest.mark.parametrize('mode', ['offset', 'scanner'])
def test_perturbation_bounded_by_scanner_variation(mode):
  hu, x = _volume()
  keys = jax.random.split(jax.random.PRNGKey(0), 64)
  ys = jax.vmap(lambda k: augment.perturb_intensity(x, k, mode, pool.HU_WINDOW))(keys)
  inside = np.asarray(x) != 0
  d = _to_hu(ys)[:, inside] - hu[inside]
  gain = GAIN_BOUND if mode == 'scanner' else 0.0
  bound = OFFSET_BOUND + gain * np.maximum(hu[inside], 0) + 1e-3
  assert (np.abs(d) <= bound).all()
  assert np.abs(d).max() > 0.5 * OFFSET_BOUND                 # it does perturb
  np.testing.assert_array_equal(np.asarray(ys)[:, ~inside], 0.0)
  if mode == 'offset':                                        # one shift per volume
    np.testing.assert_allclose(d.std(axis=1), 0.0, atol=1e-2)


def test_none_is_identity_and_legacy_is_the_old_jitter():
  _, x = _volume()
  k = jax.random.PRNGKey(1)
  np.testing.assert_array_equal(augment.perturb_intensity(x, k, 'none', pool.HU_WINDOW), x)
  y = np.asarray(augment.perturb_intensity(x, k, 'legacy', pool.HU_WINDOW))
  inside = np.asarray(x) != 0
  # y = x * scale + shift with |scale - 1| <= 0.1, |shift| <= 0.1: recover them by a line fit.
  scale, shift = np.polyfit(np.asarray(x)[inside], y[inside], 1)
  assert abs(scale - 1) <= 0.1 + 1e-6 and abs(shift) <= 0.1 + 1e-6
  with pytest.raises(ValueError, match='unknown intensity augmentation'):
    augment.intensity_bounds('huge')


def test_flip_permutes_voxels():
  _, x = _volume()
  y = augment.augment_original(x, jax.random.PRNGKey(5), 1.0, 'none', pool.HU_WINDOW)
  np.testing.assert_array_equal(np.asarray(y), np.asarray(x)[::-1, ::-1, ::-1])


def _zero_filled_shift(x, d):
  """x moved by d = (dz, dy, dx) voxels, the uncovered border zero (written with numpy)."""
  out = np.zeros_like(x)
  src = tuple(slice(max(0, -s), x.shape[i] - max(0, s)) for i, s in enumerate(d))
  dst = tuple(slice(max(0, s), x.shape[i] - max(0, -s)) for i, s in enumerate(d))
  out[dst] = x[src]
  return out


def test_shift_translates_by_whole_voxels_within_the_bound():
  x = np.random.default_rng(0).random((7, 8, 9)).astype(np.float32)
  np.testing.assert_array_equal(augment.shift(x, jax.random.PRNGKey(0), 0), x)
  seen = set()
  for i in range(40):
    y = np.asarray(augment.shift(jnp.asarray(x), jax.random.PRNGKey(i), 2))
    hits = [d for d in np.ndindex(5, 5, 5)
            if np.array_equal(y, _zero_filled_shift(x, tuple(v - 2 for v in d)))]
    assert len(hits) == 1                 # exactly one translation within +-2 voxels per axis
    seen.add(hits[0])
  assert len(seen) > 10                   # and not always the same one


def test_shift_vox_zero_leaves_the_default_draws_unchanged():
  _, x = _volume()
  k = jax.random.PRNGKey(3)
  a = augment.augment_original(x, k, 0.5, 'scanner', pool.HU_WINDOW)
  b = augment.augment_original(x, k, 0.5, 'scanner', pool.HU_WINDOW, shift_vox=0)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  c = augment.augment_original(x, k, 0.5, 'scanner', pool.HU_WINDOW, shift_vox=1)
  assert np.asarray(c).shape == np.asarray(a).shape
