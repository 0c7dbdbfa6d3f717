"""Annotation transfer against index arithmetic done by hand."""
import numpy as np
import pytest

from osteojax.align import transfer
from osteojax.align.rigid import Rigid2D
from osteojax.evaluate import metrics


def test_mask_moves_by_index_arithmetic():
  rng = np.random.default_rng(0)
  dxa = rng.integers(0, 4, (30, 20)).astype(np.int32)
  t = Rigid2D(0.0, (5.0, 7.0))                     # MRI pixel (x, y) -> DXA (x + 5, y + 7)
  out = transfer.mask_to_source(dxa, t, (12, 10))
  np.testing.assert_array_equal(out, dxa[7:19, 5:15])
  # a quarter turn about (0, 0) then a shift: (x, y) -> (-y + 15, x + 2), exact on the grid
  t = Rigid2D(np.pi / 2, (15.0, 2.0))
  out = transfer.mask_to_source(dxa, t, (8, 6))
  want = np.array([[dxa[x + 2, 15 - y] for x in range(6)] for y in range(8)])
  np.testing.assert_array_equal(out, want)
  assert out.dtype == dxa.dtype


def test_outside_is_background_and_round_trip():
  yy, xx = np.mgrid[0:40, 0:30]
  dxa = ((xx - 15) ** 2 + (yy - 20) ** 2 < 64).astype(np.int32) * 2
  t = Rigid2D(np.deg2rad(7.0), (3.5, -2.0), (15.0, 20.0))
  mri = transfer.mask_to_source(dxa, t, (40, 30))
  back = transfer.mask_to_source(mri, t.inverse(), (40, 30))
  assert metrics.dice(back, dxa, [2])[2] > 0.9
  far = transfer.mask_to_source(dxa, Rigid2D(0.0, (100.0, 0.0)), (10, 10))
  assert (far == 0).all()


def test_image_to_target_and_keypoints():
  img = np.arange(12 * 10, dtype=np.float32).reshape(12, 10)
  t = Rigid2D(0.0, (4.0, 3.0))                     # MRI -> DXA
  on_dxa = transfer.image_to_target(img, t, (20, 16))
  np.testing.assert_allclose(on_dxa[3:15, 4:14], img)
  assert on_dxa[0, 0] == 0
  np.testing.assert_allclose(transfer.keypoints_to_target([[1.0, 2.0]], t), [[5.0, 5.0]])
  # different pixel sizes: a 2 mm MRI onto a 1 mm grid with the identity in mm
  fine = transfer.resample(img, 2.0, Rigid2D(), (24, 20), 1.0)
  np.testing.assert_allclose(fine[::2, ::2], img)
  with pytest.raises(ValueError, match='label maps'):
    transfer.mask_to_source(img, t, (5, 5))
