"""BodySim: shapes, determinism, the stored transform against the keypoints and masks, files."""
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk

from osteojax.data import bodysim
from osteojax.data.io import OsteoDataError


def test_shapes_and_determinism():
  a = bodysim.make_subject([0, 2, 5], scale=4)
  b = bodysim.make_subject([0, 2, 5], scale=4)
  c = bodysim.make_subject([0, 2, 6], scale=4)
  assert a['dxa'].shape == (200, 75, 2) and a['mri'].shape == (125, 56, 2)
  assert a['spacing_mm'] == pytest.approx(8.8)
  np.testing.assert_array_equal(a['dxa'], b['dxa'])
  assert not np.array_equal(a['dxa'], c['dxa'])
  assert np.isfinite(a['dxa']).all() and np.isfinite(a['mri']).all()
  assert set(np.unique(a['dxa_mask'])) == {0, 1, 2, 3}
  assert set(np.unique(a['mri_mask'])) == {0, 1, 2, 3}


def test_full_scale_geometry():
  g = bodysim.geometry(1)
  assert g['dxa_shape'] == (800, 300) and g['mri_shape'] == (501, 224)
  assert g['spacing_mm'] == 2.2


def test_transform_maps_keypoints_and_masks():
  """The rigid truth carries MRI keypoints onto DXA keypoints: S1 exactly (rigid trunk), the
  joints up to their stated non-rigid jitter; and the MRI pelvic cavity onto the DXA one."""
  jitter = bodysim.param('joint_jitter_mm')
  for i in range(4):
    s = bodysim.make_subject([1, 0, i], scale=4)
    t = s['truth']
    moved = bodysim.apply_transform(t['matrix_mri_to_dxa'], t['keypoints_mri'])
    err_mm = np.linalg.norm(moved - np.asarray(t['keypoints_dxa']), axis=1) * s['spacing_mm']
    assert err_mm[4] < 1e-6                        # S1
    assert (err_mm[:4] < 6 * jitter).all()         # joints: jitter only
    rr, cc = np.nonzero(s['mri_mask'] == 3)
    p = np.round(bodysim.apply_transform(t['matrix_mri_to_dxa'],
                                         np.stack([rr, cc], 1))).astype(int)
    hit = s['dxa_mask'][p[:, 0], p[:, 1]] == 3
    assert hit.mean() > 0.85
    # the identity is far off: the MRI starts near the neck
    assert np.linalg.norm(np.asarray(t['translation_px'])) * s['spacing_mm'] > 100


def test_modality_contrast():
  """Bone bright in DXA bone, nearly invisible in MRI: mean over spine vs soft tissue."""
  s = bodysim.make_subject([3, 0, 0], scale=4)
  spine_d = s['dxa'][..., 0][s['dxa_mask'] == 1].mean()
  body_d = s['dxa'][..., 0][(s['dxa_mask'] == 0) & (s['dxa'][..., 1] > 0.3)].mean()
  assert spine_d > 3 * body_d
  spine_m = s['mri'][..., 0][s['mri_mask'] == 1].mean()
  assert spine_m < 0.5                              # faint marrow, dark cortex


def test_generate_and_load(tmp_path):
  out = tmp_path / 'bs'
  bodysim.generate(str(out), scale=4, seed=0, sizes=dict(train=3, test=2), progress=False)
  d = bodysim.load_pairs(str(out), 'test')
  assert d['dxa'].shape == (2, 200, 75, 2) and d['mri'].shape == (2, 125, 56, 2)
  assert d['keypoints_dxa'].shape == (2, 5, 2) and d['matrix_mri_to_dxa'].shape == (2, 2, 3)
  assert d['ids'] == ['test/00000', 'test/00001']
  ref = bodysim.make_subject([0, bodysim.SPLIT_CODES['test'], 1], scale=4)
  np.testing.assert_array_equal(d['dxa'][1], ref['dxa'])
  np.testing.assert_array_equal(d['mri_mask'][1], ref['mri_mask'])
  img = sitk.ReadImage(str(out / 'test' / '00000' / 'mri.nii'))
  assert img.GetNumberOfComponentsPerPixel() == 2 and img.GetSpacing() == pytest.approx((8.8, 8.8))
  assert json.load(open(out / 'bodysim.json', encoding='utf-8'))['geometry']['mri_shape'] == [125, 56]
  assert not [p for p in os.listdir(tmp_path) if p.startswith('.')]   # no staging left
  with pytest.raises(OsteoDataError, match="no split 'val'"):
    bodysim.load_pairs(str(out), 'val')
  with pytest.raises(OsteoDataError, match='not a BodySim data set'):
    bodysim.load_pairs(str(tmp_path), 'test')
