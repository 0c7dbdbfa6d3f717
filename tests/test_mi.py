"""Mutual-information baseline on a generated image pair with a known rigid transform."""
import numpy as np
import pytest
import SimpleITK as sitk

from osteojax.align import mi
from osteojax.align.rigid import Rigid2D


def blobs(shape, n, seed):
  """A smooth image: a sum of random Gaussian blobs. [H, W] float32."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:shape[0], 0:shape[1]]
  img = np.zeros(shape)
  for _ in range(n):
    cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
    s = rng.uniform(3, 10)
    img += rng.uniform(0.5, 1.0) * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * s * s))
  return img.astype(np.float32)


def make_pair(truth_px: Rigid2D, spacing, src_shape=(96, 64), tgt_shape=(160, 100), seed=0):
  """(source, target): source(p) = g(target(T(p))) + noise, g a non-monotonic remap."""
  tgt = blobs(tgt_shape, 60, seed)
  t_img = mi.to_sitk_image(tgt, spacing)
  ref = sitk.Image(src_shape[1], src_shape[0], sitk.sitkFloat32)
  ref.SetSpacing((spacing, spacing))
  src = sitk.GetArrayFromImage(sitk.Resample(t_img, ref, truth_px.to_mm(spacing).to_sitk(),
                                             sitk.sitkLinear, 0.0))
  v = src / tgt.max()
  src = 1.0 - (2 * v - 0.6) ** 2                       # another "modality": intensities folded
  src = src + np.random.default_rng(seed + 1).normal(0, 0.02, src.shape)
  return src.astype(np.float32), tgt


@pytest.mark.parametrize('seed', [0, 1])
def test_mattes_mi_recovers_known_transform(seed):
  spacing = 2.2
  truth = Rigid2D(np.deg2rad(4.0 if seed else -3.0), (20.0 + 5 * seed, 25.0),
                  (31.5, 47.5))                               # source pixels -> target pixels
  src, tgt = make_pair(truth, spacing, seed=seed)
  res = mi.register_mi(src, tgt, spacing, init='geometry', seed=seed)
  y, x = np.mgrid[0:src.shape[0]:8, 0:src.shape[1]:8]
  pts = np.stack([x.ravel(), y.ravel()], -1).astype(float)
  err = np.linalg.norm(res.transform_px.apply(pts) - truth.apply(pts), axis=-1)
  assert err.mean() < 1.0, (res, err.mean())                    # pixels
  mm = np.linalg.norm(res.transform_mm.apply(pts * spacing) - truth.apply(pts) * spacing, axis=-1)
  np.testing.assert_allclose(mm, err * spacing, rtol=1e-6, atol=1e-9)


def test_mi_bad_input():
  img = np.ones((40, 40), np.float32)
  with pytest.raises(ValueError, match='constant'):
    mi.register_mi(img, blobs((40, 40), 5, 0), 2.2)
  with pytest.raises(ValueError, match='one channel'):
    mi.register_mi(np.zeros((40, 40, 2)), blobs((40, 40), 5, 0), 2.2)
  with pytest.raises(ValueError, match='init'):
    mi.register_mi(blobs((40, 40), 5, 1), blobs((40, 40), 5, 0), 2.2, init='bogus')
