"""Torso phantom: deterministic, geometry as declared, truth consistent with the images."""
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from osteojax.data import io, labels, torso
from osteojax.data import params as P

SMALL = dict(first='T12', last='L2', torso_mm=(150.0, 120.0), spacing=(1.0, 1.0, 2.5))


def make(seed=0, **kw):
  return torso.make_torso(torso.TorsoSpec(**{**SMALL, **kw}), np.random.default_rng(seed))


def test_deterministic_and_seeded():
  a, b, c = make(0), make(0), make(1)
  arr = sitk.GetArrayViewFromImage
  np.testing.assert_array_equal(arr(a['ct']), arr(b['ct']))
  np.testing.assert_array_equal(arr(a['mask']), arr(b['mask']))
  assert a['truth'] == b['truth']
  assert not np.array_equal(arr(a['ct']), arr(c['ct']))


@pytest.mark.parametrize('convention', ['verse', 'totalseg'])
def test_labels_and_truth(convention):
  t = make(2, convention=convention, flip=('x', 'y'))
  ct, mask, truth = t['ct'], t['mask'], t['truth']
  assert ct.GetPixelID() == sitk.sitkInt16 and mask.GetPixelID() == sitk.sitkUInt8
  assert ct.GetSpacing() == pytest.approx(SMALL['spacing'])
  assert ct.GetDirection() == pytest.approx((-1, 0, 0, 0, -1, 0, 0, 0, 1))
  assert min(abs(o) for o in ct.GetOrigin()) > 1.0      # a non-trivial origin
  levels = [v['level'] for v in truth['vertebrae']]
  assert levels == ['T12', 'L1', 'L2']
  values = np.unique(sitk.GetArrayViewFromImage(mask))
  assert list(values) == sorted([0] + [labels.level_to_label(lv, convention) for lv in levels])
  zs = [v['center'][2] for v in truth['vertebrae']]
  assert zs == sorted(zs, reverse=True)                  # superior first, z up
  for v in truth['vertebrae']:
    assert v['label'] == labels.level_to_label(v['level'], convention)
    # center_index is the continuous index whose physical point is the centre
    assert ct.TransformContinuousIndexToPhysicalPoint(v['center_index']) == pytest.approx(
        v['center'], abs=1e-6)
    # the body's label lies around its design centre (posterior indentation: < 1 mm off)
    assert np.linalg.norm(np.subtract(v['mask_centroid'], v['center'])) < 1.0
    idx = np.round(v['center_index']).astype(int)
    assert mask[tuple(int(i) for i in idx)] == v['label']
    # vertebra height along z matches the body size (to a voxel)
    k = np.nonzero((sitk.GetArrayViewFromImage(mask) == v['label']).any((1, 2)))[0]
    assert abs((k.max() - k.min() + 1) * SMALL['spacing'][2] - v['size_mm'][0]) <= 2.6
  df = t['manifest']
  assert list(df.columns[:7]) == io.REAL_COLUMNS
  assert df['level'].tolist() == levels
  assert df['bmd'].notna().tolist() == [lv in P.LABELED_LEVELS for lv in levels]
  assert set(df['device']) == {truth['device']} and truth['device'] in P.DEVICE_NAMES


def test_flip_is_the_same_physical_image():
  plain, flipped = make(3), make(3, flip=('x', 'y'))
  for key in ('ct', 'mask'):
    back = sitk.Resample(flipped[key], plain[key], sitk.Transform(), sitk.sitkNearestNeighbor)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(back),
                                  sitk.GetArrayViewFromImage(plain[key]))


def test_bone_and_soft_tissue_hu():
  t = make(4)
  ct = sitk.GetArrayViewFromImage(t['ct'])
  mask = sitk.GetArrayViewFromImage(t['mask'])
  assert ct[0, 0, 0] < -900                                # air in the corner
  for v in t['truth']['vertebrae']:
    inside = ndimage.binary_erosion(mask == v['label'], iterations=3)   # off the cortex
    assert abs(ct[inside].mean() - v['hu_scanner']) < 35   # trabecular HU through the scanner
  k = ct.shape[0] // 2
  body = ct[k][ct[k] > -500]
  assert -150 < np.median(body) < 100                      # soft tissue and fat


def test_write_formats(tmp_path):
  made = torso.make_torso(torso.TorsoSpec(), np.random.default_rng(0))
  for fmt in ('nifti', 'nrrd', 'dicom'):
    out = tmp_path / fmt
    torso.write_torso(made, out, fmt)
    assert sorted(os.listdir(out)) == sorted(
        [torso.CT_NAMES[fmt], torso.MASK_NAMES[fmt], 'truth.json', 'manifest.csv'])
    ct = io.read_image(str(out / torso.CT_NAMES[fmt]))
    assert ct.GetSize() == made['ct'].GetSize()
    assert ct.GetOrigin() == pytest.approx(made['ct'].GetOrigin(), abs=1e-4)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(ct),
                                  sitk.GetArrayViewFromImage(made['ct']))
    with open(out / 'truth.json', encoding='utf-8') as f:
      assert json.load(f)['vertebrae'][0]['level'] == 'T11'
  assert [p for p in os.listdir(tmp_path) if p.startswith('.')] == []


def test_bad_spec():
  with pytest.raises(ValueError, match="unknown level 'L9'"):
    make(last='L9')
  with pytest.raises(ValueError, match='runs upwards'):
    make(first='L2', last='T12')
  with pytest.raises(ValueError, match="unknown device 'norland'"):
    make(device='norland')
  with pytest.raises(labels.LabelError, match="'L6' has no label in the totalseg"):
    make(first='L5', last='L6')


def test_atomic_path_replaces_only_on_success(tmp_path):
  """io.atomic_path: the target is either its old self or complete; the temporary name keeps
  the extension (so writers that choose a format by it work) and is gone afterwards."""
  path = tmp_path / 'sub' / 'img.nii.gz'
  img = sitk.GetImageFromArray(np.arange(24, dtype=np.int16).reshape(2, 3, 4))
  with io.atomic_path(path) as tmp:
    assert tmp.endswith('img.nii.gz') and io.TMP_TAG in os.path.basename(tmp)
    sitk.WriteImage(img, tmp, useCompression=True)
  np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(path))),
                                sitk.GetArrayFromImage(img))
  text = tmp_path / 'a.json'
  io.atomic_write_text(text, '{"v": 1}')
  with pytest.raises(RuntimeError):
    with io.atomic_path(text) as tmp:
      open(tmp, 'w', encoding='utf-8').write('{"v": ')     # killed half-way
      raise RuntimeError('interrupted')
  assert json.loads(text.read_text(encoding='utf-8')) == {'v': 1}
  assert sorted(os.listdir(tmp_path)) == ['a.json', 'sub']
  assert os.listdir(tmp_path / 'sub') == ['img.nii.gz']


def test_atomic_path_keeps_usual_permissions(tmp_path):
  """Files written through io.atomic_path get the permissions of an ordinary open() (umask),
  not the owner-only mode of the temporary file they start as."""
  umask = os.umask(0o022)
  os.umask(umask)
  io.atomic_write_text(tmp_path / 'a.txt', 'x')
  with open(tmp_path / 'b.txt', 'w', encoding='utf-8') as f:
    f.write('x')
  assert (os.stat(tmp_path / 'a.txt').st_mode & 0o777) == (os.stat(tmp_path / 'b.txt').st_mode & 0o777)
