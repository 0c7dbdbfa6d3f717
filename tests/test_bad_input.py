"""Bad real-data input: one clear error naming the file and the problem, and no output left."""
import os
import shutil
import struct
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from osteojax.data import extract, io, torso

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = torso.TorsoSpec(first='L1', last='L2', torso_mm=(120.0, 100.0), spacing=(1.2, 1.2, 2.5))


@pytest.fixture(scope='module')
def base(tmp_path_factory):
  """A tiny torso (L1, L2; TotalSegmentator labels 31, 30) written once."""
  out = tmp_path_factory.mktemp('base') / 'torso'
  torso.write_torso(torso.make_torso(SPEC, np.random.default_rng(0)), out)
  return out


@pytest.fixture
def src(base, tmp_path):
  """A private copy of the torso to spoil."""
  return shutil.copytree(base, tmp_path / 'src')


def assert_nothing_written(out):
  assert not os.path.exists(out)
  parent, name = os.path.split(str(out))
  assert [p for p in os.listdir(parent) if p.startswith(f'.{name}')] == []


def assert_fails(src, match, manifest=None, convention='totalseg', path=None):
  """Extraction from src into a sibling 'out' raises OsteoDataError matching `match`."""
  out = src.parent / 'out'
  with pytest.raises(io.OsteoDataError, match=match) as e:
    extract.extract_rois(manifest or src / 'manifest.csv', out, convention)
  assert_nothing_written(out)
  assert '\n' not in str(e.value)
  if path is not None:
    assert e.value.path == str(path)
    assert str(e.value).startswith(f'{path}: ')
  return e.value


def edit_manifest(src, **changes):
  """Write src/edited.csv: the manifest with columns replaced (value) or dropped (None)."""
  df = pd.read_csv(src / 'manifest.csv', dtype=str, keep_default_na=False)
  for col, value in changes.items():
    df = df.drop(columns=col) if value is None else df.assign(**{col: value})
  df.to_csv(src / 'edited.csv', index=False)
  return src / 'edited.csv'


def rewrite(path, fn):
  """Read an image, apply fn(img) -> img, write it back."""
  sitk.WriteImage(fn(sitk.ReadImage(str(path))), str(path), useCompression=True)


# ---------------------------------------------------------------------------------------------
# Images.

def test_missing_image(src):
  assert_fails(src, 'no such file or folder', edit_manifest(src, ct_path='nope.nii.gz'),
        path=src / 'nope.nii.gz')


def test_truncated_gz(src):
  ct = src / 'ct.nii.gz'
  data = ct.read_bytes()
  ct.write_bytes(data[:len(data) // 2])
  assert_fails(src, 'corrupt or truncated gzip data', path=ct)


def test_truncated_plain_nifti(src):
  sitk.WriteImage(sitk.ReadImage(str(src / 'ct.nii.gz')), str(src / 'ct.nii'))
  data = (src / 'ct.nii').read_bytes()
  (src / 'ct.nii').write_bytes(data[:-1000])
  assert_fails(src, r'truncated NIfTI: \d+ bytes of data, the header needs \d+',
        edit_manifest(src, ct_path='ct.nii'), path=src / 'ct.nii')


def test_garbage_bytes(src):
  (src / 'mask.nii.gz').write_bytes(b'\x00not an image\xff' * 50)
  assert_fails(src, 'cannot read image: Unable to determine ImageIO reader', path=src / 'mask.nii.gz')


def test_zero_byte_file(src):
  (src / 'ct.nii.gz').write_bytes(b'')
  assert_fails(src, r'empty file \(0 bytes\)', path=src / 'ct.nii.gz')


def test_empty_image_zero_slices(src):
  img = sitk.ReadImage(str(src / 'ct.nii.gz'))
  sitk.WriteImage(img, str(src / 'ct.nii'))
  header = bytearray((src / 'ct.nii').read_bytes())
  struct.pack_into('<h', header, 40 + 2 * 3, 0)     # dim[3] = 0: no slices
  (src / 'ct.nii').write_bytes(bytes(header))
  assert_fails(src, r'empty image: size \(\d+, \d+, 1\)', edit_manifest(src, ct_path='ct.nii'),
        path=src / 'ct.nii')


def test_empty_image_constant(src):
  rewrite(src / 'ct.nii.gz', lambda img: img * 0 - 1024)
  assert_fails(src, 'empty image: every voxel is -1024', path=src / 'ct.nii.gz')


@pytest.mark.parametrize('name', ['ct_nan.nii.gz', 'ct_nan.nii', 'ct_nan.nrrd'])
def test_nan_voxels(src, name):
  # ITK's NIfTI reader turns NaN into 0 on its own: io checks the file's data itself.
  img = sitk.ReadImage(str(src / 'ct.nii.gz'))
  arr = sitk.GetArrayFromImage(img).astype(np.float32)
  arr[3, 4, 5], arr[6, 7, 8] = np.nan, np.inf
  out = sitk.GetImageFromArray(arr)
  out.CopyInformation(img)
  sitk.WriteImage(out, str(src / name), useCompression=True)
  assert_fails(src, '2 NaN or infinite voxels', edit_manifest(src, ct_path=name), path=src / name)


def test_all_zero_mask(src):
  rewrite(src / 'mask.nii.gz', lambda img: img * 0)
  assert_fails(src, r'empty mask: every voxel is 0', path=src / 'mask.nii.gz')


def test_label_absent(src):
  rewrite(src / 'mask.nii.gz', lambda img: sitk.ChangeLabel(img, {30: 0}))   # no L2 any more
  assert_fails(src, r'label 30 \(L2, totalseg\) is absent; labels present: 31',
        path=src / 'mask.nii.gz')


def test_dicom_problems(base, tmp_path):
  made = torso.make_torso(SPEC, np.random.default_rng(0))
  torso.write_torso(made, tmp_path / 'src', 'dicom')
  folder = tmp_path / 'src' / torso.CT_NAMES['dicom']
  slices = sorted(os.listdir(folder))
  os.remove(folder / slices[len(slices) // 2])
  assert_fails(tmp_path / 'src', 'uneven DICOM slice positions', path=folder)
  shutil.rmtree(folder)
  os.makedirs(folder)
  assert_fails(tmp_path / 'src', 'folder holds no DICOM series', path=folder)


# ---------------------------------------------------------------------------------------------
# Geometry.

def _shift_origin(mm):
  def fn(img):
    img.SetOrigin(tuple(np.add(img.GetOrigin(), mm)))
    return img
  return fn


def _scale_spacing(img):
  img.SetSpacing(tuple(s * 1.01 for s in img.GetSpacing()))
  return img


def _flip_direction(img):
  img.SetDirection(tuple(np.diag([-1.0, 1.0, 1.0]).ravel()))
  return img


@pytest.mark.parametrize('what,fn', [
    ('size', lambda img: img[:, :, :-1]),
    ('spacing', _scale_spacing),
    ('origin', _shift_origin((0.0, 0.6, 0.0))),
    ('direction', _flip_direction)])
def test_geometry_mismatch(src, what, fn):
  rewrite(src / 'mask.nii.gz', fn)
  assert_fails(src, rf'{what} .* differs from the CT {src / "ct.nii.gz"}', path=src / 'mask.nii.gz')


def test_geometry_within_tolerance(src, tmp_path):
  rewrite(src / 'mask.nii.gz', _shift_origin((1e-4, -1e-4, 1e-4)))
  df = extract.extract_rois(src / 'manifest.csv', tmp_path / 'out', 'totalseg')
  assert len(df) == 2


def test_check_geometry_direct():
  a = sitk.Image(4, 5, 6, sitk.sitkInt16)
  b = sitk.Image(4, 5, 6, sitk.sitkUInt8)
  io.check_geometry(a, b, 'ct', 'mask')
  b.SetSpacing((1.0, 1.0, 1.001))
  with pytest.raises(io.OsteoDataError, match=r'mask: spacing \(1, 1, 1.001\) mm differs'):
    io.check_geometry(a, b, 'ct', 'mask')


# ---------------------------------------------------------------------------------------------
# Manifest.

def test_unknown_device(src):
  assert_fails(src, r"line 2: unknown device 'norland' \(known: hologic, ge_lunar, medix\)",
        edit_manifest(src, device='norland'), path=src / 'edited.csv')


def test_unknown_level(src):
  assert_fails(src, r"line 2: unknown level 'L7'", edit_manifest(src, level=['L7', 'L2']),
        path=src / 'edited.csv')


def test_level_without_label(src):
  assert_fails(src, r"line 3: level 'L6' has no label in the totalseg convention",
        edit_manifest(src, level=['L1', 'L6']), path=src / 'edited.csv')


def test_unknown_convention(src):
  assert_fails(src, "unknown label convention 'nnunet'", convention='nnunet',
        path=src / 'manifest.csv')


def test_missing_column(src):
  assert_fails(src, r'missing column\(s\) bmd \(needs patient, ct_path, mask_path',
        edit_manifest(src, bmd=None), path=src / 'edited.csv')


def test_non_numeric_bmd(src):
  assert_fails(src, r"line 3: bmd 'abc' is not a number", edit_manifest(src, bmd=['0.9', 'abc']),
        path=src / 'edited.csv')
  assert_fails(src, r"line 2: bmd '850' outside 0.2..2.5 g/cm2", edit_manifest(src, bmd=['850', '']),
        path=src / 'edited.csv')


def test_missing_manifest(tmp_path):
  with pytest.raises(io.OsteoDataError, match='no such file'):
    extract.extract_rois(tmp_path / 'none.csv', tmp_path / 'out', 'totalseg')
  assert_nothing_written(tmp_path / 'out')


def test_duplicate_vertebra(src):
  assert_fails(src, 'line 3: patient torso level L1 already on line 2',
        edit_manifest(src, level=['L1', 'L1']), path=src / 'edited.csv')


# ---------------------------------------------------------------------------------------------
# No half-written output, ever.

def test_failure_after_progress_leaves_nothing(src):
  """The first CT is cut, the second is broken: its ROIs must not survive."""
  df = pd.read_csv(src / 'manifest.csv', dtype=str, keep_default_na=False)
  other = df.assign(patient='second', ct_path='broken.nii.gz')
  (src / 'broken.nii.gz').write_bytes(b'garbage' * 10)
  pd.concat([df, other]).to_csv(src / 'two.csv', index=False)
  assert_fails(src, 'cannot read image', src / 'two.csv', path=src / 'broken.nii.gz')


def test_failed_rerun_keeps_the_earlier_output(src):
  out = src.parent / 'out'
  first = extract.extract_rois(src / 'manifest.csv', out, 'totalseg')
  before = sorted(os.listdir(out / 'rois' / 'A'))
  with pytest.raises(io.OsteoDataError, match='unknown device'):
    extract.extract_rois(edit_manifest(src, device='x'), out, 'totalseg')
  assert sorted(os.listdir(out / 'rois' / 'A')) == before
  assert len(pd.read_csv(out / 'manifest.csv')) == len(first)
  assert [p for p in os.listdir(src.parent) if p.startswith('.out')] == []


def test_foreign_output_folder_untouched(src):
  out = src.parent / 'out'
  os.makedirs(out)
  (out / 'precious.txt').write_text('keep me')
  with pytest.raises(io.OsteoDataError, match='exists and is not an output of this tool'):
    extract.extract_rois(src / 'manifest.csv', out, 'totalseg')
  assert os.listdir(out) == ['precious.txt']


# ---------------------------------------------------------------------------------------------
# The CLI: one line on stderr, exit status 2, nothing written.

def run_cli(*args):
  return subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'extract_rois.py'), *args],
                        capture_output=True, encoding='utf-8', errors='replace', cwd=ROOT,
                        env=dict(os.environ, PYTHONPATH=ROOT))


def test_cli_errors(src):
  out = src.parent / 'out'
  data = (src / 'ct.nii.gz').read_bytes()
  (src / 'ct.nii.gz').write_bytes(data[:len(data) // 3])
  cases = [
      (src / 'manifest.csv', f'error: {src / "ct.nii.gz"}: corrupt or truncated gzip data'),
      (edit_manifest(src, bmd=None), f'error: {src / "edited.csv"}: missing column(s) bmd'),
  ]
  for manifest, start in cases:
    r = run_cli(str(manifest), str(out), '--labels', 'totalseg', '--quiet')
    assert r.returncode == 2
    assert r.stderr.startswith(start), r.stderr
    assert r.stderr.count('\n') == 1 and r.stderr.endswith('\n')
    assert_nothing_written(out)


def test_cli_unknown_device_make_then_extract(tmp_path):
  made = tmp_path / 'src'
  r = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'make_torso.py'), '--out',
                      str(made), '--levels', 'L1:L2', '--spacing', '1.5,1.5,3', '--labels', 'verse'],
                     capture_output=True, encoding='utf-8', errors='replace', cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
  assert r.returncode == 0, r.stderr
  edited = edit_manifest(made, device='norland')
  r = run_cli(str(edited), str(tmp_path / 'out'), '--labels', 'verse')
  assert r.returncode == 2
  assert r.stderr == (f"error: {edited}: line 2: unknown device 'norland' "
                      f"(known: hologic, ge_lunar, medix)\n")
  assert r.stdout == ''
  assert_nothing_written(tmp_path / 'out')


def test_main_bad_config_value_is_one_line(tmp_path):
  """An unknown choice in a config stops `python -m osteojax.main` with one line, status 2,
  before any data, checkpoint or config is written: an earlier run's config.json stays."""
  cases = [('configs/default.py', '--config.task=bogus', "unknown task 'bogus'"),
           ('configs/finetune.py', '--config.select=bogus', "config.select 'bogus'"),
           ('configs/finetune.py', '--config.score=bogus', "config.score 'bogus'"),
           ('configs/finetune.py', '--config.loss.class_weight=bogus',
            "unknown config.loss.class_weight 'bogus'"),
           ('configs/finetune.py', '--config.augment.shift_vox=-1',
            'config.augment.shift_vox must be a whole number'),
           ('configs/tp_swav.py', '--config.views=bogus', "unknown config.views 'bogus'"),
           ('configs/swinmm.py', '--config.swinmm.mask_patch=3', 'mask_patch 3 must divide'),
           ('configs/swinmm.py', '--config.model.name=resnet3d', 'must be swin3d'),
           ('configs/alice.py', '--config.alice.mask_ratio=1.5', 'alice.mask_ratio must lie')]
  for i, (cfg, flag, expect) in enumerate(cases):
    work = tmp_path / f'run{i}'
    work.mkdir()
    (work / 'config.json').write_text('{"earlier": "run"}')
    r = subprocess.run([sys.executable, '-m', 'osteojax.main', '--config', cfg, '--workdir',
                        str(work), flag, f'--config.data.dir={tmp_path / "data"}'],
                       capture_output=True, encoding='utf-8', errors='replace', cwd=ROOT,
                       env=dict(os.environ, PYTHONPATH=ROOT))
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.startswith('error: ') and expect in r.stderr, r.stderr[-2000:]
    assert r.stderr.count('\n') == 1, r.stderr
    assert not os.path.exists(tmp_path / 'data')
    assert os.listdir(work) == ['config.json']
    assert (work / 'config.json').read_text() == '{"earlier": "run"}', cfg
