"""Real pairs through a manifest CSV: BodySim pairs written as files of other sizes, spacings and
formats come back as the same arrays, keypoints and masks, train and evaluate through the entry
point to the same results; bad manifests give one-line errors."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from osteojax.align import manifest
from osteojax.data import bodysim
from osteojax.data.io import OsteoDataError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAD = (3, 2)          # DXA rows, cols of zeros added on each side


def _write(arr, path, spacing, origin):
  img = sitk.GetImageFromArray(np.ascontiguousarray(arr))
  img.SetSpacing((spacing, spacing))
  img.SetOrigin(origin)
  sitk.WriteImage(img, path)


def write_manifest(data_dir: str, out: str) -> str:
  """Every BodySim pair as per-channel files: the DXA padded (other size) as NIfTI, the MRI
  up-sampled 2x by pixel repetition (other spacing) as NRRD, masks likewise, keypoints as
  physical points. Pixel (r, c) of the original scans sits at (c s, r s) mm."""
  os.makedirs(out, exist_ok=True)
  rows = []
  for split in ('train', 'val', 'test'):
    d = bodysim.load_pairs(data_dir, split)
    s = d['spacing_mm']
    for i, sid in enumerate(d['ids']):
      sub = os.path.join(out, sid.replace('/', '_'))
      os.makedirs(sub, exist_ok=True)
      row = dict(subject=sid, split=split)
      pr, pc = PAD
      dorigin = (-pc * s, -pr * s)
      morigin = (-s / 4, -s / 4)
      up = lambda a: np.repeat(np.repeat(a, 2, axis=0), 2, axis=1)
      for k, c in enumerate(bodysim.DXA_CHANNELS):
        _write(np.pad(d['dxa'][i, ..., k], ((pr, pr), (pc, pc))), f'{sub}/dxa_{c}.nii.gz', s,
               dorigin)
        row[f'dxa_{c}'] = f'{os.path.basename(sub)}/dxa_{c}.nii.gz'
      for k, c in enumerate(bodysim.MRI_CHANNELS):
        _write(up(d['mri'][i, ..., k]), f'{sub}/mri_{c}.nrrd', s / 2, morigin)
        row[f'mri_{c}'] = f'{os.path.basename(sub)}/mri_{c}.nrrd'
      _write(np.pad(d['dxa_mask'][i], ((pr, pr), (pc, pc))), f'{sub}/dxa_mask.nii.gz', s, dorigin)
      _write(up(d['mri_mask'][i]), f'{sub}/mri_mask.nrrd', s / 2, morigin)
      row.update(dxa_mask=f'{os.path.basename(sub)}/dxa_mask.nii.gz',
                 mri_mask=f'{os.path.basename(sub)}/mri_mask.nrrd')
      for mod in ('dxa', 'mri'):
        kp = d[f'keypoints_{mod}'][i]                       # (row, col) pixels
        with open(f'{sub}/{mod}_kp.json', 'w', encoding='utf-8') as f:
          json.dump((kp[:, ::-1] * s).tolist(), f)          # physical (x, y)
        row[f'{mod}_keypoints'] = f'{os.path.basename(sub)}/{mod}_kp.json'
      rows.append(row)
  path = os.path.join(out, 'manifest.csv')
  import pandas as pd
  pd.DataFrame(rows).to_csv(path, index=False)
  return path


@pytest.fixture(scope='module')
def bodysim_and_manifest(tmp_path_factory):
  root = tmp_path_factory.mktemp('manifest')
  data = str(root / 'bodysim')
  bodysim.generate(data, 8, 0, dict(train=8, val=4, test=4), 0, progress=False)
  return data, write_manifest(data, str(root / 'files'))


def _load(path, split, g):
  return manifest.load(path, split, bodysim.DXA_CHANNELS, bodysim.MRI_CHANNELS, g['spacing_mm'],
                       g['dxa_shape'], g['mri_shape'])


def test_manifest_gives_back_the_bodysim_arrays(bodysim_and_manifest):
  data, path = bodysim_and_manifest
  g = bodysim.geometry(8)
  for split in ('train', 'test'):
    want, got = bodysim.load_pairs(data, split), _load(path, split, g)
    assert got['ids'] == want['ids']
    for k in ('dxa', 'mri'):
      np.testing.assert_allclose(got[k], want[k], atol=1e-5)
    for k in ('dxa_mask', 'mri_mask'):
      np.testing.assert_array_equal(got[k], want[k])
    for k in ('keypoints_dxa', 'keypoints_mri'):
      np.testing.assert_allclose(got[k], want[k], atol=1e-6)


def test_place_pads_and_crops_centred():
  a = np.arange(12, dtype=float).reshape(3, 4)
  out, off = manifest.place(a, (5, 2))
  assert off == (1, -1)
  np.testing.assert_array_equal(out[1:4], a[:, 1:3])
  assert out[0].sum() == 0 and out[4].sum() == 0


@pytest.fixture(scope='module')
def manifest_run(bodysim_and_manifest, tmp_path_factory):
  """configs/align.py:tiny trained on the manifest through the entry point."""
  _, path = bodysim_and_manifest
  work = tmp_path_factory.mktemp('manifest_run') / 'run'
  env = dict(os.environ, PYTHONPATH=ROOT)
  r = subprocess.run([sys.executable, '-m', 'osteojax.main', '--config', 'configs/align.py:tiny',
                      '--workdir', str(work), f'--config.data.manifest={path}'], cwd=ROOT, env=env,
                     capture_output=True, encoding='utf-8', errors='replace', timeout=600)
  assert r.returncode == 0, r.stderr[-2000:]
  return work


def test_train_and_evaluate_on_a_manifest(bodysim_and_manifest, manifest_run, tmp_path):
  """Its test evaluation equals the evaluation of the same checkpoint on the BodySim files."""
  data, _ = bodysim_and_manifest
  with open(manifest_run / 'eval_test.json', encoding='utf-8') as f:
    via_manifest = json.load(f)
  from osteojax.align import retrieval
  via_bodysim = retrieval.evaluate_run(str(manifest_run), 'test', data_dir=data,
                                       out_dir=str(tmp_path / 'b'))
  for k, v in via_bodysim['metrics'].items():
    if not isinstance(v, dict):
      assert via_manifest['metrics'][k] == pytest.approx(v, abs=1e-6), k
  assert via_manifest['reference']['recall@1'] == via_bodysim['reference']['recall@1']
  assert via_manifest['reference']['mean_rank'] == via_bodysim['reference']['mean_rank']
  assert via_manifest['generated_data'] is False and via_bodysim['placement'] is not None


@pytest.mark.slow
def test_registration_table_on_a_manifest(bodysim_and_manifest, manifest_run, tmp_path):
  """tools/registration_table.py on the manifest (keypoint-fit alignment for the refiner) and
  on the BodySim files (truth): every method that does not learn from the alignment gives the
  same keypoint errors. (Mattes MI is left out: ITK's multi-threaded metric does not repeat
  its optimisation path exactly between processes, which on these 17.6 mm toy scans changes
  its result.)"""
  data, _ = bodysim_and_manifest
  common = ['--aligner', str(manifest_run), '--test-pairs', '4', '--mi-pairs', '4',
            '--refine-pairs', '4', '--refine-steps', '4', '--unet-seeds', 'none',
            '--bench-pairs', '0', '--overlay-pairs', '1']
  out = {}
  for name, extra in (('manifest', []), ('bodysim', ['--data', data])):
    r = subprocess.run([sys.executable, 'tools/registration_table.py', '--out',
                        str(tmp_path / name)] + common + extra, cwd=ROOT,
                       env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True,
                       encoding='utf-8', errors='replace', timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    with open(tmp_path / name / 'table1.json', encoding='utf-8') as f:
      out[name] = json.load(f)
  assert out['manifest']['refiner']['aligned_by'] == 'keypoint fit'
  assert out['bodysim']['refiner']['aligned_by'] == 'truth'
  for k in ('identity', 'dense', 'salient', 'floor'):
    np.testing.assert_allclose(out['manifest']['per_pair_errors_cm'][k],
                               out['bodysim']['per_pair_errors_cm'][k], atol=1e-3, err_msg=k)


def _rewrite(path, tmp_path, edit):
  import pandas as pd
  df = pd.read_csv(path, dtype=str, keep_default_na=False)
  df = edit(df)
  out = os.path.join(os.path.dirname(path), 'bad.csv')
  df.to_csv(out, index=False)
  return out


def test_bad_manifests_one_line(bodysim_and_manifest, tmp_path):
  _, path = bodysim_and_manifest
  g = bodysim.geometry(8)
  base = os.path.dirname(path)

  def err(p, split='train'):
    with pytest.raises(OsteoDataError) as e:
      _load(p, split, g)
    assert '\n' not in str(e.value)
    return str(e.value)

  assert 'missing column(s) mri_water' in err(_rewrite(path, tmp_path,
                                                             lambda d: d.drop(columns='mri_water')))
  def empty(d):
    d.loc[0, 'dxa_bone'] = ''
    return d
  assert 'missing channel' in err(_rewrite(path, tmp_path, empty))
  with open(os.path.join(base, 'broken.nii.gz'), 'wb') as f:
    f.write(b'not an image')
  def broken(d):
    d.loc[0, 'dxa_tissue'] = 'broken.nii.gz'
    return d
  assert 'cannot read image' in err(_rewrite(path, tmp_path, broken))
  sitk.WriteImage(sitk.Image(10, 10, sitk.sitkUInt8), os.path.join(base, 'scan.png'))
  def png(d):
    d.loc[0, 'mri_fat'] = 'scan.png'
    return d
  assert 'no pixel spacing' in err(_rewrite(path, tmp_path, png))
  # DXA and MRI of different patients (DICOM PatientID)
  for mod, pid in (('dxa', 'A'), ('mri', 'B')):
    img = sitk.Cast(sitk.Image(20, 30, sitk.sitkFloat32) + 1, sitk.sitkInt16)
    img.SetSpacing((17.6, 17.6))
    img.SetMetaData('0010|0020', pid)
    sitk.WriteImage(img, os.path.join(base, f'{mod}_{pid}.dcm'))
  def other(d):
    for c in bodysim.DXA_CHANNELS:
      d.loc[0, f'dxa_{c}'] = 'dxa_A.dcm'
    for c in bodysim.MRI_CHANNELS:
      d.loc[0, f'mri_{c}'] = 'mri_B.dcm'
    for k in ('dxa_mask', 'mri_mask', 'dxa_keypoints', 'mri_keypoints'):
      d.loc[0, k] = ''
    return d
  msg = err(_rewrite(path, tmp_path, other))
  assert "patient 'A'" in msg and "patient 'B'" in msg
  assert 'appears more than once' in err(_rewrite(path, tmp_path,
                                                  lambda d: d.assign(subject='same')))
  assert 'no subjects in split' in err(path, 'nosuch')
  assert 'no such manifest' in err(os.path.join(base, 'absent.csv'))


def test_entry_point_bad_manifest_one_line(bodysim_and_manifest, tmp_path):
  """A bad manifest, or a bad file it names, stops `python -m osteojax.main` with one line and
  exit status 2 before anything is written: an earlier run's config.json stays as it was."""
  _, path = bodysim_and_manifest
  base = os.path.dirname(path)
  with open(os.path.join(base, 'garbled.nrrd'), 'wb') as f:
    f.write(b'not an image')
  def garbled(d):
    d.loc[len(d) - 1, 'mri_fat'] = 'garbled.nrrd'     # the last row: a test pair
    return d
  cases = [(str(tmp_path / 'absent.csv'), 'no such manifest'),
           (_rewrite(path, tmp_path, garbled), 'garbled.nrrd: cannot read image')]
  for i, (csv, expect) in enumerate(cases):
    work = tmp_path / f'run{i}'
    work.mkdir()
    (work / 'config.json').write_text('{"earlier": "run"}')
    r = subprocess.run([sys.executable, '-m', 'osteojax.main', '--config',
                        'configs/align.py:tiny', '--workdir', str(work),
                        f'--config.data.manifest={csv}'],
                       cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True,
                       encoding='utf-8', errors='replace', timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error:') and expect in lines[0], lines
    assert os.listdir(work) == ['config.json']
    assert (work / 'config.json').read_text() == '{"earlier": "run"}'
