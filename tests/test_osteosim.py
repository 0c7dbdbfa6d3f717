"""OsteoSim writer: deterministic, readable NIfTI with spacing, cached, resumable; the CLI task."""
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from osteojax.data import osteosim
from osteojax.data import params as P

TINY = P.RoiGeometry(shape=(16, 16, 16), spacing_mm=3.6, supersample=2)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
  out = str(tmp_path_factory.mktemp('osteosim') / 'ds')
  return out, osteosim.generate(out, scale=0.003, seed=0, geometry=TINY, workers=1,
                                progress=False)


def test_files_readable_with_spacing(tiny):
  out, df = tiny
  assert not os.path.exists(out + '.partial')
  row = df.iloc[0]
  img = sitk.ReadImage(os.path.join(out, row.path))
  mask = sitk.ReadImage(os.path.join(out, row.mask_path))
  assert img.GetSize() == (16, 16, 16) and np.allclose(img.GetSpacing(), 3.6)
  assert mask.GetSize() == img.GetSize()
  assert sitk.GetArrayFromImage(mask).sum() > 0
  back = osteosim.read_manifest(out)
  assert list(back.roi_id) == list(df.roi_id)
  assert (back.label.dropna() == df.label.dropna()).all()
  assert set(df.split) == {'train', 'valid', 'test', 'pretrain'}


def test_deterministic_and_worker_independent(tiny, tmp_path):
  out, df = tiny
  other = str(tmp_path / 'again')
  osteosim.generate(other, scale=0.003, seed=0, geometry=TINY, workers=2, progress=False)
  for rel in df.path.iloc[::7]:
    a = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(out, rel)))
    b = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(other, rel)))
    assert (a == b).all()


def test_cached_and_resumable(tiny, tmp_path):
  out, df = tiny
  assert osteosim.is_current(out, 0.003, 0, TINY)
  assert not osteosim.is_current(out, 0.003, 1, TINY)
  # A killed run: a partial folder with half the ROIs and a stray temporary file.
  part = str(tmp_path / 'ds')
  os.makedirs(part + '.partial/rois/A')
  first = df.iloc[0]
  img_path = os.path.join(part + '.partial', first.path)
  sitk.WriteImage(sitk.GetImageFromArray(np.full((16, 16, 16), 7, np.int16)), img_path)
  with open(img_path.replace('.nii.gz', '.tmp.nii.gz'), 'wb') as f:
    f.write(b'truncated')
  osteosim.generate(part, scale=0.003, seed=0, geometry=TINY, workers=1, progress=False)
  # the mask of the first ROI was missing, so it was redone whole
  a = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(part, first.path)))
  b = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(out, first.path)))
  assert (a == b).all()
  assert not os.path.exists(part + '.partial')


def test_main_runs_osteosim_task(tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT)
  cmd = [sys.executable, '-m', 'osteojax.main', '--config', f'{ROOT}/configs/osteosim.py:tiny',
         '--workdir', str(tmp_path / 'wd'), f'--config.data.dir={tmp_path / "data"}',
         '--config.data.workers=1']
  res = subprocess.run(cmd, capture_output=True, encoding='utf-8', errors='replace', env=env, cwd=tmp_path, timeout=300)
  assert res.returncode == 0, res.stderr[-2000:]
  assert 'Oracle ceiling' in res.stdout and '| A |' in res.stdout
  assert (tmp_path / 'wd' / 'osteosim_summary.md').exists()
  assert (tmp_path / 'wd' / 'config.json').exists()
  assert (tmp_path / 'wd' / 'osteosim.png').stat().st_size > 10000
  bad = subprocess.run(cmd[:-2] + ['--config.task=nope'], capture_output=True, encoding='utf-8', errors='replace',
                       env=env, cwd=tmp_path, timeout=300)
  assert bad.returncode != 0 and "unknown task 'nope'" in bad.stderr
