"""tools/build_texture_pool.py: content, cache (second run is a no-op), resume after a
kill (temp files / missing sidecars), and one-line errors with non-zero exit."""

import csv
import os

import numpy as np
import pytest
import SimpleITK as sitk

from osteojax.texture import GLCMSettings
from osteojax.texture.pool import normalize_pool
from osteojax.texture.reference import pyradiomics_maps
from osteojax.texture.synthetic import ct_vertebra_roi

SHAPE = (8, 9, 10)


@pytest.fixture(scope='module')
def tool(load_tool):
  return load_tool('build_texture_pool')


def write_nifti(path, array, spacing=(0.7, 0.8, 2.0)):
  img = sitk.GetImageFromArray(array)
  img.SetSpacing(spacing)
  sitk.WriteImage(img, str(path))
  return str(path)


def make_dataset(tmp_path, n=3, seed=0):
  rng = np.random.default_rng(seed)
  rows = []
  for k in range(n):
    image, mask, _ = ct_vertebra_roi(rng, SHAPE)
    rows.append(dict(roi_id=f'v{k}', path=write_nifti(tmp_path / f'img{k}.nii.gz', image),
                     mask_path=write_nifti(tmp_path / f'msk{k}.nii.gz', mask), level='L1'))
  return write_manifest(tmp_path / 'rois.csv', rows), rows


def write_manifest(path, rows, columns=None):
  columns = columns or list(rows[0])
  with open(path, 'w', newline='') as f:
    w = csv.DictWriter(f, columns, extrasaction='ignore')
    w.writeheader()
    w.writerows(rows)
  return str(path)


def run(tool, manifest, out, *extra):
  return tool.main(['--manifest', manifest, '--out', str(out), '--no-progress', *extra])


def snapshot(out):
  return {n: os.stat(os.path.join(out, n)).st_mtime_ns for n in sorted(os.listdir(out))}


def test_builds_pool_matching_pyradiomics_and_second_run_is_noop(tool, tmp_path, monkeypatch):
  manifest, rows = make_dataset(tmp_path)
  out = tmp_path / 'pool'
  assert run(tool, manifest, out) == 0
  with open(out / 'pool_manifest.csv', encoding='utf-8') as f:
    listed = list(csv.DictReader(f))
  assert [r['roi_id'] for r in listed] == ['v0', 'v1', 'v2']
  assert len({r['settings_hash'] for r in listed}) == 1
  for row in rows:
    pool = np.load(out / f'{row["roi_id"]}.npy')
    image = sitk.GetArrayFromImage(sitk.ReadImage(row['path']))
    mask = sitk.GetArrayFromImage(sitk.ReadImage(row['mask_path']))
    assert pool.shape == (5,) + SHAPE and pool.dtype == np.float32
    ref = pyradiomics_maps(image, mask, (2.0, 0.8, 0.7), GLCMSettings())
    np.testing.assert_allclose(pool, np.asarray(normalize_pool(image, ref, mask)),
                               rtol=1e-5, atol=1e-6)
    assert np.all(pool[:, mask == 0] == 0) and np.isfinite(pool).all()

  before = snapshot(out)

  def no_compute(*a, **k):
    raise AssertionError('second run must not compute')
  monkeypatch.setattr(tool.pool_lib, 'texture_pools', no_compute)
  assert run(tool, manifest, out) == 0
  assert snapshot(out) == before


def test_resumes_after_kill(tool, tmp_path):
  manifest, _ = make_dataset(tmp_path)
  out = tmp_path / 'pool'
  assert run(tool, manifest, out) == 0
  good = np.load(out / 'v1.npy')
  # A kill during v1's write: a partial temp file, and an array whose sidecar never landed.
  (out / ('v1.npy' + tool.TMP_TAG + 'abc')).write_bytes(b'\x93NUMPY partial')
  with open(out / 'v1.npy', 'r+b') as f:
    f.truncate(100)
  os.remove(out / 'v1.json')
  # A kill before v2's sidecar was replaced: stale key.
  (out / 'v2.json').write_text('{"key": "stale"}')
  mtime_v0 = os.stat(out / 'v0.npy').st_mtime_ns
  assert run(tool, manifest, out) == 0
  np.testing.assert_array_equal(np.load(out / 'v1.npy'), good)
  assert not [n for n in os.listdir(out) if tool.TMP_TAG in n]
  assert os.stat(out / 'v0.npy').st_mtime_ns == mtime_v0          # untouched
  assert tool.sidecar_key(str(out), 'v2') != 'stale'


def test_settings_change_recomputes(tool, tmp_path):
  manifest, _ = make_dataset(tmp_path, n=1)
  out = tmp_path / 'pool'
  assert run(tool, manifest, out) == 0
  key = tool.sidecar_key(str(out), 'v0')
  assert run(tool, manifest, out, '--binWidth', '10') == 0
  assert tool.sidecar_key(str(out), 'v0') != key


def test_manifest_saved_with_bom_and_non_ascii_ids(tool, tmp_path):
  """A manifest exported by a spreadsheet (UTF-8 with a byte-order mark) and ROI ids outside
  ASCII read as written, whatever the process's locale."""
  _, rows = make_dataset(tmp_path, n=1)
  rows[0]['roi_id'] = 'vertèbre-0'
  manifest = tmp_path / 'rois_bom.csv'
  with open(manifest, 'w', newline='', encoding='utf-8-sig') as f:
    w = csv.DictWriter(f, list(rows[0]))
    w.writeheader()
    w.writerows(rows)
  out = tmp_path / 'pool'
  assert run(tool, str(manifest), out) == 0
  assert os.path.exists(out / 'vertèbre-0.npy')


def test_missing_columns(tool, tmp_path, capsys):
  manifest = write_manifest(tmp_path / 'bad.csv', [dict(roi_id='a', path='x.nii')])
  assert run(tool, manifest, tmp_path / 'pool') == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and 'bad.csv' in err[0] and 'mask_path' in err[0]


@pytest.mark.parametrize('problem', ['unreadable', 'empty_mask', 'nan', 'shape'])
def test_roi_errors_name_the_file(tool, tmp_path, capsys, problem):
  rng = np.random.default_rng(1)
  image, mask, _ = ct_vertebra_roi(rng, SHAPE)
  img_path, msk_path = tmp_path / 'img.nii.gz', tmp_path / 'msk.nii.gz'
  if problem == 'unreadable':
    img_path.write_bytes(b'not an image')
    bad = img_path
  else:
    write_nifti(img_path, image)
  if problem == 'empty_mask':
    mask[:] = 0
    bad = msk_path
  if problem == 'nan':             # NIfTI I/O in ITK drops NaN; NRRD keeps it
    img_path = tmp_path / 'img.nrrd'
    image = image.astype(np.float32)
    image[2, 3, 4] = np.nan
    write_nifti(img_path, image)
    bad = img_path
  if problem == 'shape':
    mask = mask[:, :, :-1]
    bad = msk_path
  write_nifti(msk_path, mask)
  manifest = write_manifest(tmp_path / 'rois.csv', [dict(roi_id='r', path=str(img_path),
                                                         mask_path=str(msk_path))])
  assert run(tool, manifest, tmp_path / 'pool') == 1
  err = [l for l in capsys.readouterr().err.splitlines() if l.startswith('error')]
  assert len(err) == 1 and str(bad) in err[0], err
  assert not os.path.exists(tmp_path / 'pool' / 'r.npy')


def test_keep_going_skips_bad_rows(tool, tmp_path):
  manifest, rows = make_dataset(tmp_path, n=2)
  rows.append(dict(roi_id='broken', path=str(tmp_path / 'missing.nii.gz'),
                   mask_path=rows[0]['mask_path']))
  manifest = write_manifest(tmp_path / 'rois2.csv', rows)
  out = tmp_path / 'pool'
  assert run(tool, manifest, out, '--keep-going') == 1
  with open(out / 'pool_manifest.csv', encoding='utf-8') as f:
    assert [r['roi_id'] for r in csv.DictReader(f)] == ['v0', 'v1']
