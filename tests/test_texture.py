"""Parity of osteojax.texture GLCM maps with live pyradiomics 3.0.1 (voxelBased=True).

Every case runs pyradiomics' featureextractor on the same arrays and compares voxel for
voxel: same NaN pattern, relative error <= 1e-5 in float32 wherever pyradiomics is finite.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from osteojax.texture import FEATURES, GLCMSettings, discretize, glcm_angles, glcm_maps
from osteojax.texture import glcm as glcm_lib
from osteojax.texture import pool as pool_lib
from osteojax.texture.reference import pyradiomics_maps

RTOL = 1e-5
SHAPE = (10, 12, 14)
SPACING = (2.5, 0.8, 0.7)            # anisotropic, per array axis
maps_jit = jax.jit(glcm_maps, static_argnames='settings')


# ----------------------------------------------------------------------------- helpers

def ct_vertebra(rng, shape, dtype=np.int16, center=None, radii=None):
  """CT-like vertebral body: trabecular 100-300 HU + noise inside, cortical shell
  600-1000 HU, soft tissue -100..60 HU around, a few bright 1200 HU spots.
  Returns (image [*shape] dtype, mask [*shape] uint8 = body incl. inner shell)."""
  shape = np.asarray(shape)
  center = (shape - 1) / 2 if center is None else np.asarray(center, float)
  radii = 0.42 * shape if radii is None else np.asarray(radii, float)
  idx = np.indices(tuple(shape)).astype(float)
  rho = np.sqrt(sum(((idx[d] - center[d]) / radii[d]) ** 2 for d in range(len(shape))))
  img = rng.uniform(-100, 60, tuple(shape))
  shell = rho < 1.0
  img[shell] = rng.uniform(600, 1000, shell.sum())
  body = rho < 0.8
  trab = 200 + 100 * np.sin(idx[-2] * 1.3) * np.cos(idx[-1] * 0.9 + idx[0] * 0.7)
  img[body] = (trab + rng.normal(0, 40, tuple(shape)))[body]
  spots = body & (rng.random(tuple(shape)) < 0.02)
  img[spots] = 1200
  img = np.clip(img, -100, 1200)
  if np.issubdtype(dtype, np.integer):
    img = np.round(img)
  return img.astype(dtype), (rho < 0.9).astype(np.uint8)


def random_roi(rng, shape=SHAPE, p=0.35, lo=-100, hi=1200):
  img = rng.integers(lo, hi, shape).astype(np.int16)
  return img, (rng.random(shape) < p).astype(np.uint8)


def sphere_mask(shape, radius):
  idx = np.indices(shape).astype(float)
  c = (np.asarray(shape) - 1) / 2
  return (sum((idx[d] - c[d]) ** 2 for d in range(len(shape))) <= radius ** 2).astype(np.uint8)


def ours(image, mask, spacing, settings):
  # float32 input (exact for int16 HU) and uint8 masks: cases with equal settings and shape
  # share one compiled executable.
  out = maps_jit(jnp.asarray(image, jnp.float32), jnp.asarray(mask, jnp.uint8),
                 jnp.asarray(spacing, jnp.float32), settings=settings)
  return np.stack([np.asarray(m) for m in out])


def assert_parity(image, mask, spacing, settings):
  ref = pyradiomics_maps(image, mask, spacing, settings)
  out = ours(image, mask, spacing, settings)
  roi = np.asarray(mask) > 0
  assert out.shape == ref.shape
  for c, name in enumerate(FEATURES):
    r, o = ref[c], out[c]
    np.testing.assert_array_equal(np.isnan(o), np.isnan(r), err_msg=f'{name}: NaN pattern')
    fin = ~np.isnan(r)
    assert fin[roi].any(), f'{name}: no finite ROI voxel, the case tests nothing'
    err = np.abs(o[fin].astype(np.float64) - r[fin])
    bad = err > RTOL * np.abs(r[fin])
    assert not bad.any(), (f'{name}: {bad.sum()} voxels off, max rel err '
                           f'{np.max(err / np.maximum(np.abs(r[fin]), 1e-30)):.3g}')
    np.testing.assert_array_equal(o[~roi], settings.initValue, err_msg=f'{name}: outside ROI')
  return ref


# ----------------------------------------------------------------------------- unit pieces

@pytest.mark.parametrize('shape,force2D,dim', [
    ((3, 4, 5), False, 0), ((1, 4, 5), False, 0), ((3, 4, 5), True, 0), ((3, 4, 5), True, 1),
    ((3, 4, 5), True, 2), ((4, 5), False, 0)])
def test_angles_match_cmatrices(shape, force2D, dim):
  from radiomics import cMatrices
  img = np.ones(shape, np.int32)
  _, angles = cMatrices.calculate_glcm(img, np.ones(shape, bool), np.array([1]), 1,
                                       force2D, dim)
  assert glcm_angles(shape, force2D, dim) == tuple(map(tuple, angles.tolist()))


@pytest.mark.parametrize('kw', [dict(binWidth=25), dict(binWidth=10), dict(binWidth=7.5),
                                dict(binCount=16), dict(binCount=7), dict(binCount=5)])
@pytest.mark.parametrize('kind', ['int', 'float32', 'edges', 'flat'])
def test_discretize_matches_binimage(kw, kind):
  from radiomics import imageoperations
  rng = np.random.default_rng(1)
  shape = (6, 7, 8)
  if kind == 'int':
    img = rng.integers(-1000, 2000, shape).astype(np.int16)
  elif kind == 'float32':
    img = rng.normal(150, 300, shape).astype(np.float32)
  elif kind == 'edges':        # many values exactly on bin edges, non-integer minimum
    img = (rng.integers(-8, 40, shape) * 12.5 + 0.25).astype(np.float32)
  else:
    img = np.full(shape, 37, np.int16)
  region = rng.random(shape) < 0.6
  ref, _ = imageoperations.binImage(img, region, **kw)
  got = discretize(jnp.asarray(img), jnp.asarray(region), GLCMSettings(**kw))
  np.testing.assert_array_equal(np.asarray(got), np.where(region, ref, 0))


def test_separable_equals_direct_kernel_sums():
  rng = np.random.default_rng(2)
  shape = (5, 6, 7)
  g = jnp.asarray(rng.integers(1, 30, shape) * (rng.random(shape) < 0.7), jnp.int32)
  m = (g > 0).astype(jnp.int32)
  gp, mp = jnp.pad(g, 3), jnp.pad(m, 3)
  for r, angles in ((1, glcm_angles(shape)), (2, [(1, 0, -1)])):
    for angle in angles:
      for kernel_axes in ([True] * 3, [False, True, True]):
        if angle[0] and not kernel_axes[0]:
          continue
        d = glcm_lib._angle_sums_direct(gp, mp, angle, r, kernel_axes, shape, 3, True)
        s = glcm_lib._angle_sums_separable(gp, mp, angle, r, kernel_axes, shape, 3, True)
        for x, y in zip(d, s):
          np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ----------------------------------------------------------------------------- parity grid

def _outlier_case(rng, where):
  img, msk = random_roi(rng, p=0.0)
  msk[3:7, 4:8, 4:9] = 1
  if where == 'in_crop':
    img[2, 6, 6] = 4000           # just outside the mask, inside the padded crop
  else:
    img[9, 0, 0] = -30000         # outside the padded crop
  return img, msk


def _border_case(rng):
  img, msk = random_roi(rng, p=0.5)
  msk[:, :, 5:] = 0
  msk[0, 0, 0] = msk[-1, -1, 4] = 1     # touches the first and last slice / row
  return img, msk


# Cases sharing settings (and SHAPE) share one compiled executable; each distinct
# settings costs ~2 s of XLA compile, so the default grid keeps their number small.
DEFAULT = GLCMSettings()
UNMASKED = GLCMSettings(maskedKernel=False)
R2_UNMASKED = GLCMSettings(kernelRadius=2, maskedKernel=False)
CASES = {
    'sparse_r1_masked': (lambda rng: random_roi(rng), DEFAULT),
    'sparse_r1_unmasked': (lambda rng: random_roi(rng), UNMASKED),
    'sparse_r2_masked': (lambda rng: random_roi(rng, p=0.5), GLCMSettings(kernelRadius=2)),
    'sparse_r2_unmasked': (lambda rng: random_roi(rng, p=0.2), R2_UNMASKED),
    'binwidth10': (lambda rng: random_roi(rng, lo=-50, hi=300), GLCMSettings(binWidth=10)),
    'bincount16': (lambda rng: random_roi(rng), GLCMSettings(binCount=16)),
    'bincount7_unmasked_r2': (lambda rng: random_roi(rng, p=0.4),
                              GLCMSettings(binCount=7, maskedKernel=False, kernelRadius=2)),
    'sphere': (lambda rng: (random_roi(rng)[0], sphere_mask(SHAPE, 3.6)), DEFAULT),
    'sphere_unmasked': (lambda rng: (random_roi(rng, lo=0, hi=200)[0], sphere_mask(SHAPE, 4.2)),
                        UNMASKED),
    'border_masked': (_border_case, DEFAULT),
    'border_unmasked_r2': (_border_case, R2_UNMASKED),
    'outlier_in_crop_unmasked': (lambda rng: _outlier_case(rng, 'in_crop'), UNMASKED),
    'outlier_in_crop_masked': (lambda rng: _outlier_case(rng, 'in_crop'), DEFAULT),
    'outlier_outside_crop_unmasked': (lambda rng: _outlier_case(rng, 'outside'), UNMASKED),
    'ct_int_r1': (lambda rng: ct_vertebra(rng, SHAPE), DEFAULT),
    'ct_int_r1_unmasked': (lambda rng: ct_vertebra(rng, SHAPE), UNMASKED),
    'ct_int_r2_unmasked': (lambda rng: ct_vertebra(rng, SHAPE), R2_UNMASKED),
    'ct_float_r1_bw10': (lambda rng: ct_vertebra(rng, SHAPE, np.float32),
                         GLCMSettings(binWidth=10)),
    'ct_float_r2_bincount': (lambda rng: ct_vertebra(rng, SHAPE, np.float32),
                             GLCMSettings(binCount=32, kernelRadius=2)),
    'force2D_dim0': (lambda rng: ct_vertebra(rng, SHAPE), GLCMSettings(force2D=True)),
    'force2D_dim2_unmasked': (lambda rng: random_roi(rng),
                              GLCMSettings(force2D=True, force2Ddimension=2,
                                           maskedKernel=False)),
    'asymmetric_init_value': (lambda rng: random_roi(rng, p=0.6),
                              GLCMSettings(symmetricalGLCM=False, initValue=-7.0)),
    'weight_euclidean': (lambda rng: random_roi(rng), GLCMSettings(weightingNorm='euclidean')),
    'weight_infinity_unmasked': (lambda rng: random_roi(rng),
                                 GLCMSettings(weightingNorm='infinity', maskedKernel=False)),
}
SLOW_CASES = {
    'weight_manhattan': (lambda rng: random_roi(rng, p=0.6),
                         GLCMSettings(weightingNorm='manhattan')),
    'weight_no_weighting': (lambda rng: random_roi(rng),
                            GLCMSettings(weightingNorm='no_weighting')),
    'bincount5_r1': (lambda rng: ct_vertebra(rng, SHAPE), GLCMSettings(binCount=5)),
}


def _assert_parity_cases(name, cases):
  make, settings = cases[name]
  image, mask = make(np.random.default_rng(sum(map(ord, name))))
  assert_parity(image, mask, SPACING, settings)


@pytest.mark.parametrize('name', sorted(CASES))
def test_parity_with_pyradiomics(name):
  _assert_parity_cases(name, CASES)


@pytest.mark.slow
@pytest.mark.parametrize('name', sorted(SLOW_CASES))
def test_parity_with_pyradiomics_more_settings(name):
  _assert_parity_cases(name, SLOW_CASES)


def test_parity_nan_pattern_is_exercised():
  """Isolated mask voxels: NaN everywhere for nanmean features where no pair exists, and
  JointAverage NaN wherever an angle used elsewhere in the ROI is empty in the kernel."""
  rng = np.random.default_rng(5)
  image, mask = random_roi(rng, p=0.25)
  ref = assert_parity(image, mask, SPACING, GLCMSettings())
  roi = mask > 0
  assert np.isnan(ref[0][roi]).any()
  assert np.isnan(ref[1][roi]).sum() > np.isnan(ref[0][roi]).sum()


def test_parity_2d_image():
  rng = np.random.default_rng(6)
  image, mask = ct_vertebra(rng, (16, 18))
  assert_parity(image, mask, (0.7, 0.9), GLCMSettings())
  assert_parity(image, mask, (0.7, 0.9), GLCMSettings(maskedKernel=False, kernelRadius=2))


def test_single_slice_volume_uses_in_plane_angles():
  rng = np.random.default_rng(7)
  image, mask = ct_vertebra(rng, (1, 14, 15))
  assert_parity(image, mask, (3.0, 0.7, 0.7), GLCMSettings())


# ----------------------------------------------------------------------------- batching

def test_vmapped_batch_with_support_padding_equals_single():
  """ROIs of different shapes padded into one batch (support marks real voxels, padding
  holds a wild value) give exactly the per-ROI maps; maskedKernel=False is the mode where
  the crop box, hence the support, matters."""
  rng = np.random.default_rng(8)
  rois = [ct_vertebra(rng, (8, 9, 10)), random_roi(rng)]
  settings = UNMASKED
  imgs, msks, sups = [], [], []
  for img, msk in rois:
    pad = [(0, s - n) for s, n in zip(SHAPE, img.shape)]
    imgs.append(np.pad(img.astype(np.float32), pad, constant_values=5000))
    msks.append(np.pad(msk, pad))
    sups.append(np.pad(np.ones(img.shape, bool), pad))
  batch = glcm_lib.glcm_maps_batch(jnp.asarray(np.stack(imgs)), jnp.asarray(np.stack(msks)),
                                   jnp.ones((2, 3)), jnp.asarray(np.stack(sups)),
                                   settings=settings)
  for b, (img, msk) in enumerate(rois):
    single = ours(img, msk, SPACING, settings)
    sl = (slice(None),) + tuple(slice(0, n) for n in img.shape)
    got = np.stack([np.asarray(m[b]) for m in batch])[sl]
    np.testing.assert_array_equal(got, single)


# ----------------------------------------------------------------------------- slow sweep

@pytest.mark.slow
@pytest.mark.parametrize('radius', [1, 2])
@pytest.mark.parametrize('masked', [True, False])
@pytest.mark.parametrize('bins', [dict(binWidth=25), dict(binCount=24)])
def test_parity_sweep_ct_like(radius, masked, bins):
  rng = np.random.default_rng(radius * 10 + masked)
  shape = (20, 26, 30)
  image, mask = ct_vertebra(rng, shape, center=(9.0, 13.0, 14.0), radii=(11.0, 10.0, 12.0))
  settings = GLCMSettings(kernelRadius=radius, maskedKernel=masked, **bins)
  assert_parity(image, mask, (1.5, 0.6, 0.6), settings)
  assert_parity(image.astype(np.float32) + rng.uniform(-0.5, 0.5, shape).astype(np.float32),
                mask, (1.5, 0.6, 0.6), dataclasses.replace(settings, weightingNorm='euclidean'))


def test_parity_on_osteosim_vertebra():
  """A generated vertebra ROI (realistic HU, shell, trabecular texture, scanner noise)."""
  from osteojax.data import phantom
  image, mask, spacing = phantom.sample_rois(3, (12, 12, 12), 4.0, seed=3)[1]
  assert image[mask > 0].mean() > image[mask == 0].mean() + 50   # bone inside, tissue around
  assert_parity(image, mask, spacing, GLCMSettings(binWidth=25))
  assert_parity(image, mask, spacing, GLCMSettings(binWidth=10, maskedKernel=False))


def test_merge_buckets_by_hand():
  """A bucket moves into the smallest containing one when padding costs less than a compile;
  moves chain; buckets that nothing contains stay."""
  a, b, c = (8, 8, 8), (8, 8, 16), (16, 16, 16)
  counts = {a: 2, b: 3, c: 50}
  # a -> b costs 2 * (1024 - 512) = 1024 voxels; then b (5 ROIs) -> c costs 5 * 3072 = 15360
  assert pool_lib.merge_buckets(counts, 2000) == {a: b, b: b, c: c}
  assert pool_lib.merge_buckets(counts, 20000) == {a: c, b: c, c: c}
  assert pool_lib.merge_buckets(counts, 1000) == {a: a, b: b, c: c}
  apart = {(16, 8, 8): 1, (8, 16, 8): 1}
  assert pool_lib.merge_buckets(apart, 1e9) == {k: k for k in apart}
