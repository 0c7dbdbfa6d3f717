"""Mutual-information baseline on a generated image pair with a known rigid transform."""
import numpy as np
import pytest

from osteojax.align import mi, synthetic
from osteojax.align.rigid import Rigid2D


@pytest.mark.parametrize('seed', [0, 1])
def test_mattes_mi_recovers_known_transform(seed):
  spacing = 2.2
  truth = Rigid2D(np.deg2rad(4.0 if seed else -3.0), (20.0 + 5 * seed, 25.0),
                  (31.5, 47.5))                               # source pixels -> target pixels
  src, tgt = synthetic.make_image_pair((96, 64), (160, 100), truth, spacing, seed=seed)
  res = mi.register_mi(src, tgt, spacing, init='geometry', seed=seed)
  y, x = np.mgrid[0:src.shape[0]:8, 0:src.shape[1]:8]
  pts = np.stack([x.ravel(), y.ravel()], -1).astype(float)
  err = np.linalg.norm(res.transform_px.apply(pts) - truth.apply(pts), axis=-1)
  assert err.mean() < 1.0, (res, err.mean())                    # pixels
  mm = np.linalg.norm(res.transform_mm.apply(pts * spacing) - truth.apply(pts) * spacing, axis=-1)
  np.testing.assert_allclose(mm, err * spacing, rtol=1e-6, atol=1e-9)
  again = mi.register_mi(src, tgt, spacing, init='geometry', seed=seed)
  assert again.transform_px.close_to(res.transform_px, pts, 1e-6)   # seeded sampling


def test_mi_bad_input():
  img = np.ones((40, 40), np.float32)
  with pytest.raises(ValueError, match='constant'):
    mi.register_mi(img, synthetic.blobs((40, 40), 5, 0), 2.2)
  with pytest.raises(ValueError, match='one channel'):
    mi.register_mi(np.zeros((40, 40, 2)), synthetic.blobs((40, 40), 5, 0), 2.2)
  with pytest.raises(ValueError, match='init'):
    mi.register_mi(synthetic.blobs((40, 40), 5, 1), synthetic.blobs((40, 40), 5, 0), 2.2,
                   init='bogus')
