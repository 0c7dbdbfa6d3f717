"""tools/register.py: outputs on a generated BodySim pair, and one-line errors on bad input.

The aligner checkpoint is an untrained `:tiny` aligner saved the way training saves it (its
maps do not register anything; the accuracy check uses --method mi, which needs the CLI's
reading, channel selection, unit conversions and resampling to be right)."""
from __future__ import annotations

import json
import os
import sys

import jax
import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from osteojax.align import bodysim_registration as br
from osteojax.align import encoders
from osteojax.align import train as align_train
from osteojax.align.rigid import Rigid2D
from osteojax.data import bodysim
from osteojax.data.io import run_cli
from osteojax.train import lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'configs'))
import align as align_config  # noqa: E402



@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp('reg')
  cfg = align_config.get_config('tiny')
  run = root / 'aligner'
  os.makedirs(run)
  with open(run / 'config.json', 'w', encoding='utf-8') as f:
    f.write(cfg.to_json())
  g = bodysim.geometry(cfg.data.scale)
  model = encoders.build_model(cfg)
  state = align_train.init_state(cfg, model, tuple(g['dxa_shape']) + (2,),
                                 tuple(g['mri_shape']) + (2,), 1)
  ck = lib.Checkpoints(str(run))
  ck.save(1, jax.device_get(state), force=True)
  ck.close()
  s = bodysim.make_subject([9, 0], cfg.data.scale)
  for name in ('dxa', 'mri'):
    bodysim._write(s[name], str(root / f'{name}.nii'), s['spacing_mm'], True)
  return root, run, s


def _as_data(s):
  t = s['truth']
  return dict(dxa=s['dxa'][None], mri=s['mri'][None], ids=['s'],
              keypoints_mri=np.array([t['keypoints_mri']]),
              keypoints_dxa=np.array([t['keypoints_dxa']]),
              matrix_mri_to_dxa=np.array([t['matrix_mri_to_dxa']]))


@pytest.fixture
def call(load_tool, capsys):
  """call(argv) -> (exit status, captured output) of tools/register.py."""
  def run(argv):
    rc = run_cli(load_tool('register').main, [str(a) for a in argv])
    return rc, capsys.readouterr()
  return run


@pytest.fixture
def one_itk_thread():
  """SimpleITK's multi-threaded metric sums in varying order; one thread makes MI exact."""
  n = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
  sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
  yield
  sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(n)


def test_outputs_match_library_and_resampling(setup, call, tmp_path, one_itk_thread):
  root, run, s = setup
  rc, cap = call(['--dxa', root / 'dxa.nii', '--mri', root / 'mri.nii', '--aligner', run,
                   '--out', tmp_path / 'o', '--method', 'mi'])
  assert rc == 0, cap.err
  with open(tmp_path / 'o' / 'transform.json', encoding='utf-8') as f:
    res = json.load(f)
  t = res['transform_px']
  est = Rigid2D(np.deg2rad(t['angle_deg']), t['translation'], t['center'])
  # the library call on the same pixels (MRI water vs DXA tissue, seeded): equal transform
  want = br.mi_method(s['spacing_mm'], 'water', 'tissue')(br.make_pairs(_as_data(s))[0])
  grid = np.array([[0.0, 0.0], [55.0, 0.0], [0.0, 124.0], [30.0, 60.0]])
  np.testing.assert_allclose(est.apply(grid), want.apply(grid), atol=1e-6)
  moved = sitk.ReadImage(str(tmp_path / 'o' / 'mri_on_dxa.nii'))
  assert moved.GetSize() == (s['dxa'].shape[1], s['dxa'].shape[0])
  assert moved.GetNumberOfComponentsPerPixel() == 2
  assert moved.GetSpacing() == pytest.approx((s['spacing_mm'],) * 2)
  # resampled MRI == scipy's linear interpolation of the MRI at T^-1(DXA pixel), inside
  arr = sitk.GetArrayFromImage(moved)
  y, x = np.mgrid[0:arr.shape[0], 0:arr.shape[1]]
  p = est.inverse().apply(np.stack([x.ravel(), y.ravel()], -1).astype(float))
  h, w = s['mri'].shape[:2]
  inside = (p[:, 0] > 0) & (p[:, 0] < w - 1) & (p[:, 1] > 0) & (p[:, 1] < h - 1)
  assert inside.sum() > 1000
  for c in range(2):
    ref = ndimage.map_coordinates(s['mri'][..., c].astype(np.float64), [p[inside, 1],
                                                                        p[inside, 0]], order=1)
    np.testing.assert_allclose(arr[..., c].ravel()[inside], ref, atol=1e-3 * s['mri'].max())
  assert os.path.getsize(tmp_path / 'o' / 'overlay.png') > 1000


def test_dense_runs_with_checkpoint(setup, call, tmp_path):
  root, run, _ = setup
  rc, cap = call(['--dxa', root / 'dxa.nii', '--mri', root / 'mri.nii', '--aligner', run,
                   '--out', tmp_path / 'o'])
  assert rc == 0, cap.err
  with open(tmp_path / 'o' / 'transform.json', encoding='utf-8') as f:
    res = json.load(f)
  assert res['method'] == 'dense' and res['aligner_step'] == 1
  assert np.isfinite(res['transform_mm']['translation']).all()


def _assert_one_line_error(rc, cap, *words):
  assert rc == 2
  lines = [ln for ln in cap.err.splitlines() if ln.strip()]
  assert len(lines) == 1 and lines[0].startswith('error:'), cap.err
  for w in words:
    assert w in lines[0], lines[0]


def test_unreadable_file(setup, call, tmp_path):
  root, run, _ = setup
  bad = tmp_path / 'bad.nii'
  bad.write_bytes(b'not an image at all' * 20)
  rc, cap = call(['--dxa', bad, '--mri', root / 'mri.nii', '--aligner', run,
                   '--out', tmp_path / 'o'])
  _assert_one_line_error(rc, cap, 'bad.nii')
  rc, cap = call(['--dxa', root / 'dxa.nii', '--mri', tmp_path / 'missing.nii', '--aligner',
                   run, '--out', tmp_path / 'o'])
  _assert_one_line_error(rc, cap, 'missing.nii', 'no such file')


def test_wrong_channels(setup, call, tmp_path):
  root, run, s = setup
  three = np.concatenate([s['dxa'], s['dxa'][..., :1]], -1)
  bodysim._write(three, str(tmp_path / 'dxa3.nii'), s['spacing_mm'], True)
  rc, cap = call(['--dxa', tmp_path / 'dxa3.nii', '--mri', root / 'mri.nii', '--aligner', run,
                   '--out', tmp_path / 'o'])
  _assert_one_line_error(rc, cap, '3 channel', 'bone')


def test_missing_checkpoint(setup, call, tmp_path):
  root, run, _ = setup
  empty = tmp_path / 'run'
  os.makedirs(empty)
  with open(empty / 'config.json', 'w', encoding='utf-8') as f:
    f.write((run / 'config.json').read_text(encoding='utf-8'))
  rc, cap = call(['--dxa', root / 'dxa.nii', '--mri', root / 'mri.nii', '--aligner', empty,
                   '--out', tmp_path / 'o'])
  _assert_one_line_error(rc, cap, 'no checkpoint')
  rc, cap = call(['--dxa', root / 'dxa.nii', '--mri', root / 'mri.nii', '--aligner',
                   tmp_path / 'nowhere', '--out', tmp_path / 'o'])
  _assert_one_line_error(rc, cap, 'config.json')


@pytest.mark.slow
def test_registration_table_one_command(setup, tmp_path):
  """tools/registration_table.py end to end at tiny size: Table 1 analog, Dice table and the
  timing JSON from one command, on an untrained aligner (the numbers mean nothing here; the
  files and their rows are what is checked)."""
  import subprocess
  _, run, _ = setup
  cfg = json.load(open(run / 'config.json', encoding='utf-8'))
  cfg['data']['dir'] = str(tmp_path / 'bodysim')
  aligner = tmp_path / 'aligner'
  os.makedirs(aligner)
  for name in os.listdir(run):
    if name != 'config.json':
      os.symlink(run / name, aligner / name)
  with open(aligner / 'config.json', 'w', encoding='utf-8') as f:
    json.dump(cfg, f)
  out = tmp_path / 'out'
  res = subprocess.run(
      [sys.executable, 'tools/registration_table.py', '--aligner', str(aligner), '--out', str(out),
       '--test-pairs', '4', '--refine-pairs', '2', '--refine-steps', '2', '--mi-pairs', '2',
       '--unet-train', '8', '--unet-steps', '2', '--bench-pairs', '1', '--overlay-pairs', '1'],
      cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, encoding='utf-8',
      errors='replace', timeout=900)
  assert res.returncode == 0, res.stderr[-3000:]
  table = json.load(open(out / 'table1.json', encoding='utf-8'))
  assert table['pairs'] == 4
  assert {'identity', 'mattes_mi', 'dense', 'salient', 'floor'} <= {r['method'] for r in table['rows']}
  assert table['aligner_cells']['pairs'] == 4
  assert 'Single cells on the test pairs' in open(out / 'table1.md', encoding='utf-8').read()
  dice = json.load(open(out / 'dice.json', encoding='utf-8'))
  assert len(dice['results']) == 3
  bench = json.load(open(out / 'bench_registration.json', encoding='utf-8'))
  assert [r['scale'] for r in bench['runs']] == [1, 4]
  assert bench['runs'][0]['dxa_image'] == [800, 300]
  assert os.path.getsize(out / 'overlays.png') > 1000
