"""ROI extraction from a real-format CT: round trip on the torso phantom against its truth."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from osteojax.data import cohort, extract, osteosim, phantom, torso
from osteojax.data import params as P

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = dict(first='T11', last='L3', torso_mm=(160.0, 125.0))   # anisotropic 0.9 x 0.9 x 2.0 mm
GEOMETRY = P.RoiGeometry()


def make(tmp_path, seed=5, fmt='nifti', name='torso', **kw):
  made = torso.make_torso(torso.TorsoSpec(**{**SPEC, **kw}), np.random.default_rng(seed))
  torso.write_torso(made, tmp_path / name, fmt)
  return tmp_path / name, made['truth']


def roi_center(img):
  """Physical point of the ROI's centre (continuous index (size - 1) / 2)."""
  return np.array(img.TransformContinuousIndexToPhysicalPoint(
      [(n - 1) / 2 for n in img.GetSize()]))


def read_rois(out_dir, df):
  return [(sitk.ReadImage(str(out_dir / p)), sitk.ReadImage(str(out_dir / m)))
          for p, m in zip(df['path'], df['mask_path'])]


def check_against_truth(out_dir, df, truth, geometry=GEOMETRY):
  """Every ROI sits on its vertebra (truth JSON) with the right level, mask and HU."""
  vert = truth['vertebrae']
  assert df['level'].tolist() == [v['level'] for v in vert]
  assert df['roi_id'].tolist() == [f'{truth["patient"]}-{v["level"]}' for v in vert]
  errors = []
  for (img, mask), v in zip(read_rois(out_dir, df), vert):
    assert img.GetSize() == tuple(geometry.shape[::-1])
    assert img.GetSpacing() == pytest.approx((geometry.spacing_mm,) * 3)
    assert img.GetDirection() == pytest.approx(np.eye(3).ravel())
    assert img.GetPixelID() == sitk.sitkInt16 and mask.GetPixelID() == sitk.sitkUInt8
    c = roi_center(img)
    err = np.linalg.norm(c - v['center'])
    assert err < geometry.spacing_mm                        # within one ROI voxel of the truth
    assert (np.abs(c - v['center']) < truth['spacing']).all()   # and one CT voxel per axis
    assert c == pytest.approx(v['mask_centroid'], abs=1e-3)  # exactly on the label's centroid
    errors.append(err)
    m = sitk.GetArrayViewFromImage(mask)
    a = sitk.GetArrayViewFromImage(img)
    mid = tuple(slice(n // 2 - 1, n // 2 + 1) for n in m.shape)
    assert m[mid].all()                                     # the body is at the centre
    assert set(np.unique(m)) == {0, 1}
    inside = ndimage.binary_erosion(m, iterations=2)
    assert abs(a[inside].mean() - v['hu_scanner']) < 40     # trabecular bone HU
    core = tuple(slice(n // 2 - 3, n // 2 + 3) for n in m.shape)   # ~1 cm cube at the centre
    assert a[core].mean() > P.HU_DISC                       # denser than disc, muscle and fat
  for row, v in zip(df.to_dict('records'), vert):
    if v['level'] in P.LABELED_LEVELS:
      assert row['bmd'] == pytest.approx(v['bmd'])
      assert row['t_score'] == pytest.approx(v['t_score'], abs=1e-9)
      assert row['label'] == int(v['t_score'] <= P.OSTEOPOROSIS_T)
      assert row['split'] == 'test'
      assert row[f'bmd_{truth["device"]}'] == row['bmd']
    else:
      assert np.isnan(row['bmd']) and np.isnan(row['t_score']) and row['split'] == 'pretrain'
  return errors


@pytest.mark.parametrize('convention,flip', [('totalseg', ()), ('verse', ()),
                                             ('totalseg', ('x', 'y')), ('verse', ('x', 'y'))])
def test_round_trip(tmp_path, convention, flip):
  src, truth = make(tmp_path, convention=convention, flip=flip)
  df = extract.extract_rois(src / 'manifest.csv', tmp_path / 'rois', convention)
  check_against_truth(tmp_path / 'rois', df, truth)
  back = osteosim.read_manifest(str(tmp_path / 'rois'))
  assert list(back.columns) == cohort.MANIFEST_COLUMNS + osteosim.PATH_COLUMNS
  assert back['roi_id'].tolist() == df['roi_id'].tolist()
  assert back[cohort.TRUTH_COLUMNS].isna().all().all()
  with open(tmp_path / 'rois' / extract.INFO, encoding='utf-8') as f:
    assert json.load(f)['convention'] == convention


def test_wrong_convention_is_caught(tmp_path):
  src, _ = make(tmp_path, convention='verse')
  from osteojax.data import io
  with pytest.raises(io.OsteoDataError, match=r'label \d+ \(T11, totalseg\) is absent'):
    extract.extract_rois(src / 'manifest.csv', tmp_path / 'rois', 'totalseg')


def test_flipped_input_gives_the_same_rois(tmp_path):
  a, _ = make(tmp_path, name='plain')
  b, _ = make(tmp_path, name='flipped', flip=('x', 'y'))
  da = extract.extract_rois(a / 'manifest.csv', tmp_path / 'ra', 'totalseg')
  db = extract.extract_rois(b / 'manifest.csv', tmp_path / 'rb', 'totalseg')
  for (ia, ma), (ib, mb) in zip(read_rois(tmp_path / 'ra', da), read_rois(tmp_path / 'rb', db)):
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(ma), sitk.GetArrayViewFromImage(mb))
    diff = np.abs(sitk.GetArrayViewFromImage(ia).astype(int) - sitk.GetArrayViewFromImage(ib))
    assert diff.max() <= 1
    assert ia.GetOrigin() == pytest.approx(ib.GetOrigin(), abs=1e-4)   # float32 in NIfTI


def _posterior_shortfall(m):
  """Anterior minus posterior extent (voxels) of a body mask [z, y, x] along y through the
  centre: positive when the posterior indentation (phantom.body_sdf, at +y) is at high y."""
  k, j, i = (n // 2 for n in m.shape)
  col = m[k, :, i - 1:i + 1].max(1)
  ys = np.nonzero(col)[0]
  return (j - ys.min()) - (ys.max() - j)


def test_orientation_matches_generated_rois(tmp_path):
  src, truth = make(tmp_path, flip=('x', 'y'))
  df = extract.extract_rois(src / 'manifest.csv', tmp_path / 'rois', 'totalseg')
  ct, mask = sitk.ReadImage(str(src / 'ct.nii.gz')), sitk.ReadImage(str(src / 'mask.nii.gz'))
  vert = truth['vertebrae']
  rois = read_rois(tmp_path / 'rois', df)
  for n in range(1, len(vert) - 1):      # z: the vertebra above sits at high z indices
    c = roi_center(rois[n][0])
    _, above = extract.cut_roi(ct, mask, vert[n - 1]['label'], c, GEOMETRY)
    _, below = extract.cut_roi(ct, mask, vert[n + 1]['label'], c, GEOMETRY)
    mid = GEOMETRY.shape[0] / 2
    assert np.nonzero(sitk.GetArrayViewFromImage(above))[0].min() > mid
    assert np.nonzero(sitk.GetArrayViewFromImage(below))[0].max() < mid
  # y: posterior at high y indices, as in the generator's ROIs.
  row = cohort.sample_cohort(0.001, 0).iloc[0].to_dict()
  _, gen_mask = phantom.render_roi(row, GEOMETRY, np.random.default_rng(0))
  assert _posterior_shortfall(gen_mask) >= 1
  for _, m in rois:
    assert _posterior_shortfall(sitk.GetArrayViewFromImage(m)) >= 1


@pytest.mark.parametrize('fmt', ['nrrd', 'dicom'])
def test_input_formats(tmp_path, fmt):
  ref, truth = make(tmp_path, name='nifti', flip=('x', 'y'))
  src, _ = make(tmp_path, name=fmt, fmt=fmt, flip=('x', 'y'))
  geometry = P.RoiGeometry(shape=(20, 24, 28), spacing_mm=1.5)   # z, y, x kept apart
  d_ref = extract.extract_rois(ref / 'manifest.csv', tmp_path / 'r_ref', 'totalseg', geometry)
  df = extract.extract_rois(src / 'manifest.csv', tmp_path / 'r_fmt', 'totalseg', geometry)
  check_against_truth(tmp_path / 'r_fmt', df, truth, geometry)
  for (ia, ma), (ib, mb) in zip(read_rois(tmp_path / 'r_ref', d_ref),
                                read_rois(tmp_path / 'r_fmt', df)):
    assert sitk.GetArrayViewFromImage(ib).shape == geometry.shape
    # NIfTI keeps the origin in float32: nearest-neighbour ties may fall the other way.
    a, b = sitk.GetArrayViewFromImage(ma), sitk.GetArrayViewFromImage(mb)
    assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.99
    diff = np.abs(sitk.GetArrayViewFromImage(ia).astype(int) - sitk.GetArrayViewFromImage(ib))
    assert diff.max() <= 1


def test_optional_columns_and_rerun(tmp_path):
  src, truth = make(tmp_path)
  df_in = __import__('pandas').read_csv(src / 'manifest.csv')
  df_in = df_in.drop(columns=['sex', 'age']).assign(split='valid')
  df_in.to_csv(src / 'nosex.csv', index=False)
  out = tmp_path / 'rois'
  df = extract.extract_rois(src / 'nosex.csv', out, 'totalseg')
  assert (df['split'] == 'valid').all()
  lab = df['level'].isin(P.LABELED_LEVELS)
  assert df.loc[lab, 'bmd'].notna().all()
  assert df['t_score'].isna().all() and df['label'].isna().all()   # no sex: no T-score
  df2 = extract.extract_rois(src / 'manifest.csv', out, 'totalseg')  # replaces the earlier run
  assert df2['t_score'].notna().sum() == lab.sum()
  assert [p for p in os.listdir(tmp_path) if p.startswith('.')] == []


def test_cli(tmp_path):
  src, truth = make(tmp_path)
  env = dict(os.environ, PYTHONPATH=ROOT)
  out = tmp_path / 'rois'
  r = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'extract_rois.py'),
                      str(src / 'manifest.csv'), str(out), '--labels', 'totalseg'],
                     capture_output=True, encoding='utf-8', errors='replace', env=env, cwd=ROOT)
  assert r.returncode == 0, r.stderr
  assert r.stderr == ''
  assert f'{len(truth["vertebrae"])} ROIs' in r.stdout
  assert len(osteosim.read_manifest(str(out))) == len(truth['vertebrae'])
