"""Baselines on tiny cases: trabecular region and HU rule by hand, radiomics against
pyradiomics itself, the oracle against osteojax.data.oracle, the whole run on a mini data set."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from osteojax.diagnosis import baselines
from osteojax.data import cohort, oracle, osteosim, phantom
from osteojax.data import io as dio
from osteojax.data import params as P
from osteojax.evaluate import diagnosis

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GEOMETRY = P.RoiGeometry((24, 24, 24), 2.4, 2)


def _pick(rows, n, rng):
  """n rows holding both labels (at least two of each where there are)."""
  pos, neg = rows[rows.label == 1], rows[rows.label == 0]
  k = min(len(pos), max(2, n // 3))
  take = [pos.sample(k, random_state=rng), neg.sample(min(len(neg), n - k), random_state=rng)]
  return pd.concat(take)


@pytest.fixture(scope='module')
def mini(tmp_path_factory):
  """A data folder in the OsteoSim layout with ~40 labeled ROIs of 24^3 at 2.4 mm."""
  out = str(tmp_path_factory.mktemp('mini'))
  t = cohort.sample_cohort(0.02, 0)
  parts = [_pick(t[t.split == 'train'], 20, 0), _pick(t[t.split == 'valid'], 8, 1),
           _pick(t[t.split == 'test'], 12, 2)]
  df = pd.concat(parts).reset_index(drop=True)
  df['path'] = [f'rois/{s}/{r}.nii.gz' for s, r in zip(df.site, df.roi_id)]
  df['mask_path'] = [f'rois/{s}/{r}_mask.nii.gz' for s, r in zip(df.site, df.roi_id)]
  for c in ('spacing_z', 'spacing_y', 'spacing_x'):
    df[c] = GEOMETRY.spacing_mm
  for i, row in df.iterrows():
    ct, mask = phantom.render_roi(row, GEOMETRY, np.random.default_rng([0, i]))
    os.makedirs(os.path.join(out, 'rois', row.site), exist_ok=True)
    sp = (GEOMETRY.spacing_mm,) * 3
    sitk.WriteImage(phantom.to_image(ct, sp), os.path.join(out, row.path))
    sitk.WriteImage(phantom.to_image(mask, sp), os.path.join(out, row.mask_path))
  osteosim.write_csv_atomic(df, os.path.join(out, osteosim.MANIFEST))
  with open(os.path.join(out, osteosim.INFO), 'w', encoding='utf-8') as f:
    json.dump(dict(generator='osteosim', cohort='paper', seed=0), f)
  return out, osteosim.read_manifest(out)


def test_trabecular_region_by_hand():
  mask = np.zeros((9, 9, 9), bool)
  mask[1:8, 1:8, 1:8] = True                            # a 7^3 cube
  region, k = baselines.trabecular_region(mask, (1.8, 1.8, 1.8))   # ceil(3.5 / 1.8) = 2
  assert k == 2 and region.sum() == 27 and region[3:6, 3:6, 3:6].all()
  # Anisotropic: 3.6 mm slices erode ceil(3.5 / 3.6) = 1 voxel in z, 1 mm pixels 4 in y, x.
  mask = np.zeros((5, 11, 11), bool)
  mask[:, 1:10, 1:10] = True
  region, _ = baselines.trabecular_region(mask, (3.6, 1.0, 1.0), min_voxels=1)
  assert region.sum() == 3 * 1 * 1 and region[1:4, 5, 5].all()
  # Too few voxels left: the erosion steps down (5^3 cube: 2 steps leave 1 voxel, 1 step 27).
  mask = np.zeros((7, 7, 7), bool)
  mask[1:6, 1:6, 1:6] = True
  region, k = baselines.trabecular_region(mask, (1.8,) * 3)
  assert k == 1 and region.sum() == 27
  with pytest.raises(ValueError, match='empty mask'):
    baselines.trabecular_region(np.zeros((3, 3, 3), bool), (1.0,) * 3)


def test_trabecular_hu_leaves_the_shell_out():
  mask = np.zeros((11, 11, 11), bool)
  mask[1:10, 1:10, 1:10] = True
  img = np.where(mask, 1000.0, -100.0)                  # dense cortex ...
  inner = np.zeros_like(mask)
  inner[3:8, 3:8, 3:8] = True                           # ... two voxels thick
  img[inner] = np.arange(125) % 7 * 10.0 + 50           # trabecular values
  hu, n, k = baselines.trabecular_hu(img, mask, (1.8,) * 3)
  assert n == 125 and k == 2 and hu == pytest.approx(np.mean(np.arange(125) % 7 * 10.0 + 50))


def test_patient_reading_level():
  assert baselines.patient_reading_level(['L3', 'L1', 'L2']) == 'L1'
  assert baselines.patient_reading_level(['L4', 'L2', 'L3']) == 'L2'
  assert baselines.patient_reading_level(['T12', 'L2']) == 'L2'    # tie: the lower level


def test_hu_rule_by_hand():
  rows = pd.DataFrame(dict(
      roi_id=['a1', 'a2', 'b1', 'c1'], patient_id=['a', 'a', 'b', 'c'], site='A', split='test',
      device='hologic', level=['L1', 'L2', 'L3', 'L1'], label=[1, 0, 0, 1],
      bmd=[0.7, 0.9, 1.0, 0.6]))
  hu = pd.DataFrame(dict(roi_id=['c1', 'a1', 'a2', 'b1'], hu=[100.0, 150.0, 170.0, 120.0]))
  p = baselines.hu_predictions(rows, hu, 160)
  assert p.score.tolist() == [-150.0, -170.0, -120.0, -100.0] and (p.threshold == -160).all()
  # a is read at L1 (150), b at its only level L3 (120), c at L1 (100)
  assert p.patient_score.tolist() == [-150.0, -150.0, -120.0, -100.0]
  ev = diagnosis.evaluate(p)
  v = ev[(ev.level == 'vertebra') & (ev.site == 'A')].iloc[0]
  # calls HU <= 160: a1 1 (y 1), a2 0 (0), b1 1 (0), c1 1 (1): tp 2, tn 1, fp 1
  assert (v.acc, v.sen, v.spe) == (3 / 4, 1.0, 1 / 2)
  pt = diagnosis.evaluate(baselines.hu_predictions(rows, hu, 110))
  pt = pt[(pt.level == 'patient') & (pt.site == 'A')].iloc[0]
  # 110: a (150) 0 but y 1; b (120) 0, y 0; c (100) 1, y 1
  assert (pt.acc, pt.sen, pt.spe) == (2 / 3, 1 / 2, 1.0)


def test_measured_hu_tracks_the_true_hu(mini):
  root, df = mini
  hu = baselines.measure_hu(root, df, progress=False)
  r = np.corrcoef(hu.hu, df.hu_true)[0, 1]
  assert r > 0.85, r


def test_radiomics_features_equal_pyradiomics_and_are_cached(mini, tmp_path, monkeypatch):
  import radiomics
  from radiomics import featureextractor
  root, df = mini
  rows = df.iloc[:3]
  cache = str(tmp_path / 'cache')
  f1 = baselines.radiomics_features(root, rows, cache, progress=False)
  radiomics.setVerbosity(40)
  ex = featureextractor.RadiomicsFeatureExtractor(binWidth=25)
  ex.disableAllFeatures()
  for c in ('firstorder', 'glcm', 'glrlm'):
    ex.enableFeatureClassByName(c)
  ref = ex.execute(os.path.join(root, rows.path.iloc[1]), os.path.join(root, rows.mask_path.iloc[1]))
  assert len(f1.columns) == 1 + 18 + 24 + 16
  for name in ('firstorder_Mean', 'glcm_Contrast', 'glrlm_RunLengthNonUniformity'):
    assert f1[name].iloc[1] == pytest.approx(float(ref['original_' + name]), rel=1e-9)
  # Cached: a second call computes nothing ...
  monkeypatch.setattr(baselines, '_extractor', lambda: (_ for _ in ()).throw(AssertionError))
  f2 = baselines.radiomics_features(root, rows, cache, progress=False)
  pd.testing.assert_frame_equal(f1, f2)
  # ... until a file changes.
  monkeypatch.undo()
  path = os.path.join(root, rows.path.iloc[0])
  st = os.stat(path)
  os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10 ** 9))
  calls = []
  real = baselines._extractor
  monkeypatch.setattr(baselines, '_extractor', lambda: calls.append(1) or real())
  baselines.radiomics_features(root, rows, cache, progress=False)
  assert calls == [1]


def test_radiomics_in_worker_processes_equal_one_process(mini, tmp_path):
  """Two worker processes give the features of one; a bad file read in a worker is the same
  one-line OsteoDataError the parent would raise."""
  root, df = mini
  rows = df.iloc[:20]                                   # two chunks
  one = baselines.radiomics_features(root, rows, progress=False, workers=1)
  two = baselines.radiomics_features(root, rows, progress=False, workers=2)
  pd.testing.assert_frame_equal(one, two)
  bad = tmp_path / 'bad'
  shutil.copytree(root, bad)
  (bad / rows.path.iloc[18]).write_bytes(b'not an image')
  with pytest.raises(dio.OsteoDataError, match=rows.path.iloc[18].split('/')[-1]) as e:
    baselines.radiomics_features(str(bad), rows, progress=False, workers=2)
  assert '\n' not in str(e.value)


def test_radiomics_model_on_separable_features():
  rng = np.random.default_rng(0)
  n = 60
  y = (np.arange(n) % 3 == 0).astype(int)
  x = rng.normal(size=(n, 4))
  x[:, 0] += 4 * y                                     # one feature separates the classes
  bmd = 1.0 - 0.1 * x[:, 1]                           # another carries BMD, linearly
  rows = pd.DataFrame(dict(roi_id=[f'r{i}' for i in range(n)],
                           patient_id=[f'p{i // 2}' for i in range(n)], site='A',
                           split=np.where(np.arange(n) < 40, 'train', 'test'), device='hologic',
                           level='L1', label=y, bmd=bmd))
  feats = pd.DataFrame(x, columns=['f0', 'f1', 'f2', 'f3']).assign(roi_id=rows.roi_id,
                                                                   const=1.0)
  train, test = rows[rows.split == 'train'], rows[rows.split == 'test']
  p = baselines.radiomics_predictions(train, test, feats)
  assert p.attrs['n_features'] == 4                   # the constant column is dropped
  from osteojax.evaluate import metrics
  assert metrics.auc(p.label, p.prob) > 0.95        # chance is 0.5
  assert np.abs(p.bmd_pred - p.bmd).max() < 0.02
  with pytest.raises(ValueError, match='too few'):
    baselines.radiomics_predictions(train.assign(label=0), test, feats)


def test_oracle_rows_equal_the_oracle(mini):
  _, df = mini
  rows = baselines.labeled_rows(df)
  p = baselines.oracle_predictions(rows)
  vert, patient = oracle.oracle_scores(rows)
  np.testing.assert_allclose(p.prob, vert)
  np.testing.assert_allclose(p.patient_score, patient.loc[p.patient_id].to_numpy())
  with pytest.raises(ValueError, match='generated data'):
    baselines.oracle_predictions(rows.assign(abmd_true=np.nan))


def test_run_baselines_writes_tables(mini, tmp_path):
  root, _ = mini
  out = str(tmp_path / 'out')
  preds = baselines.run_baselines(root, out, progress=False, ct_only_patients=2000)
  assert set(preds) == set(baselines.BASELINES)
  for name in baselines.BASELINES:
    back = diagnosis.read_predictions(os.path.join(out, f'{name}.csv'))
    assert set(back.split) == {'valid', 'test'}
  lr, ridge = preds['radiomics_lr'], preds['radiomics_ridge']   # one fit, two readouts
  np.testing.assert_array_equal(ridge.prob, lr.prob)
  t = cohort.reading_t_score(lr.bmd_pred.to_numpy(float), lr.device.to_numpy(),
                             lr.level.to_numpy())     # the fine-tuning default's readout
  np.testing.assert_allclose(ridge.score, -t)
  np.testing.assert_allclose(baselines.ridge_readout(lr, 'bmd').score,
                             -lr.bmd_pred.to_numpy(float))
  with pytest.raises(ValueError, match='ridge readout'):
    baselines.ridge_readout(lr, 'prob')
  assert 'score' not in lr.columns
  md = open(os.path.join(out, 'results.md'), encoding='utf-8').read()
  assert '| hu160 | 1 |' in md and '| oracle | 1 |' in md and '| oracle_ct_only | 1 |' in md
  assert '| oracle_hu | 1 |' in md
  assert os.path.exists(os.path.join(out, 'roc_patient.png'))


def test_cli_bad_data_folder_one_line(tmp_path):
  r = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'run_baselines.py'),
                      '--data', str(tmp_path / 'nope'), '--out', str(tmp_path / 'o')],
                     capture_output=True, encoding='utf-8', errors='replace',
                     env=dict(os.environ, PYTHONPATH=ROOT))
  assert r.returncode == 2
  assert r.stderr.strip().startswith('error: ') and 'manifest.csv' in r.stderr
  assert len(r.stderr.strip().splitlines()) == 1
