"""tools/predict.py on archives: series selection, phantomless calibration, QC gates, batch mode.

Calibration, QC and series selection are tested without a model; the model tests share one
tiny fine-tuning workdir made once per module: configs/finetune.py:tiny's model, initialised
(untrained: training costs a minute) and saved as finetune.run saves it (config.json,
bmd_stats.json, an orbax checkpoint), so finetune.load reads it like any fine-tuning run.
"""
import gzip
import hashlib
import json
import os
import runpy
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from osteojax.data import io, torso
from osteojax.data import params as P
from osteojax.diagnosis import calibration, finetune, predict, qc
from osteojax.train import lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'configs'))
import finetune as finetune_config  # noqa: E402

GEOMETRY = P.RoiGeometry(shape=(16, 16, 16), spacing_mm=3.6)    # the tiny config's ROI
SMALL = dict(torso_mm=(120.0, 100.0), spacing=(1.2, 1.2, 2.5), convention='verse')


def _torso(seed=0, **kw):
  spec = dict(SMALL, first='T12', last='L2', margin_mm=32.0)
  spec.update(kw)
  return torso.make_torso(torso.TorsoSpec(**spec), np.random.default_rng(seed))


def _verts(ct, mask, geometry=GEOMETRY):
  verts, _ = predict.vertebra_inputs(ct, sitk.Cast(mask, sitk.sitkUInt32), 'verse', geometry,
                                     'mask')
  return {v['level']: v for v in verts}


def _gates(verts):
  return {lev: [q['gate'] for q in v['qc']] for lev, v in verts.items()}


# ------------------------------------------------------------------------------ calibration
def _mean_in_vertebrae(img, mask):
  return float(sitk.GetArrayViewFromImage(img)[sitk.GetArrayViewFromImage(mask) > 0].mean())


@pytest.mark.parametrize('scanner, shift', [('A1', 40.0), ('A1', -40.0), ('D2', 0.0)])
def test_calibration_removes_a_scanner_offset(scanner, shift):
  """An offset added to the whole CT (A1 reads true HU; D2 adds +21 HU) comes out again."""
  made = _torso(scanner=scanner)
  ct, mask = made['ct'], made['mask']
  shifted = sitk.Cast(ct, sitk.sitkFloat32) + shift
  cal, rec = calibration.calibrate(shifted, mask, 'ct')
  offset = P.SCANNERS[scanner]['offset'] + shift       # what the image holds beyond true HU
  assert rec['air_hu'] == pytest.approx(calibration.AIR_HU + offset, abs=3)
  assert rec['fat_hu'] == pytest.approx(calibration.FAT_HU + offset, abs=3)
  assert rec['slope'] == pytest.approx(1.0, abs=0.01)
  assert rec['intercept'] == pytest.approx(-offset, abs=3)
  assert min(rec['air_voxels'], rec['fat_voxels']) >= calibration.MIN_REFERENCE_VOXELS
  orig = _mean_in_vertebrae(ct, mask) - P.SCANNERS[scanner]['offset']   # offset-free bone HU
  assert _mean_in_vertebrae(cal, mask) == pytest.approx(orig, abs=3)
  if offset:
    assert abs(_mean_in_vertebrae(shifted, mask) - orig) > 15      # uncalibrated: far off


def test_calibration_refuses_implausible_references():
  made = _torso()
  ct, mask = sitk.Cast(made['ct'], sitk.sitkFloat32), made['mask']
  arr = sitk.GetArrayFromImage(ct)

  def fails(a, match, m=mask):
    img = sitk.GetImageFromArray(a)
    img.CopyInformation(m)
    with pytest.raises(calibration.CalibrationError, match=match) as e:
      calibration.measure(img, m, 'ct.nii.gz')
    assert '\n' not in str(e.value) and str(e.value).startswith('ct.nii.gz: calibration: ')

  outside = arr < calibration.BODY_HU
  fails(np.where(outside, -850.0, arr), 'air outside the body reads -850 HU')
  fat = (arr > -190) & (arr < -30)
  fails(np.where(fat, 10.0, arr), 'subcutaneous fat voxels')
  fails(np.where(fat, arr - 90.0, arr), 'subcutaneous fat reads -18[0-9] HU')
  wide = np.where(outside, arr - 90.0, np.where(fat, arr + 55.0, arr))   # air -1090, fat -40
  fails(wide, 'give slope 0.86')
  # A reconstruction circle tight round the body: padding (-3024) from 4 mm outside the skin on.
  sp = np.asarray(ct.GetSpacing())[::-1]
  away = ndimage.distance_transform_edt(arr <= calibration.BODY_HU, sampling=sp)
  fails(np.where(away > 4.0, -3024.0, arr), r'calibration: 0 air voxels at least 10 mm outside')


# --------------------------------------------------------------------------------------- QC
def test_qc_passes_a_clean_torso():
  made = _torso(first='T11', last='L2')
  verts = _verts(made['ct'], made['mask'])
  assert list(verts) == ['T11', 'T12', 'L1', 'L2']
  assert all(v['qc'] == [] and v['qc_pass'] for v in verts.values()), _gates(verts)
  assert max(v['roi_outside_fraction'] for v in verts.values()) <= qc.ROI_OUTSIDE_FRACTION


def _edit(img, arr):
  out = sitk.GetImageFromArray(arr)
  out.CopyInformation(img)
  return out


def test_qc_gates_fire_on_their_cases():
  made = _torso(first='T11', last='L2')
  ct, mask = made['ct'], made['mask']
  lab = sitk.GetArrayFromImage(mask)
  value = {v['level']: v['label'] for v in made['truth']['vertebrae']}
  z_of = {lev: np.nonzero(lab == value[lev])[0] for lev in value}

  # border: the scan stops inside T11 (slices are array axis 0, superior = higher index)
  top = int(np.median(z_of['T11']))
  g = _gates(_verts(ct[:, :, :top], mask[:, :, :top]))
  assert 'border' in g['T11'] and all('border' not in g[k] for k in ('T12', 'L1', 'L2')), g
  assert 'roi_outside' in g['T11']

  # roi_outside: the scan ends 5 mm past the last vertebra, which it does not cut
  lo = int(z_of['L2'].min()) - 2
  g = _gates(_verts(ct[:, :, lo:], mask[:, :, lo:]))
  assert g['L2'] == ['roi_outside'] and g['T11'] == g['T12'] == g['L1'] == [], g

  # few_voxels: a stray speck labelled L3 in the soft tissue
  speck = lab.copy()
  k, j, i = (int(np.median(a)) for a in np.nonzero(lab == value['L2']))
  speck[k:k + 2, j - 30:j - 26, i:i + 4] = value['L2'] + 1            # verse L3
  g = _gates(_verts(ct, _edit(mask, speck)))
  assert 'few_voxels' in g['L3'] and all(g[k] == [] for k in ('T11', 'T12', 'L1', 'L2')), g

  # level_order by size: L1 cut to its upper third (a transitional / mislabelled vertebra)
  part = lab.copy()
  z = z_of['L1']
  part[(lab == value['L1']) & (np.arange(lab.shape[0])[:, None, None]
                               < z.min() + 2 * (z.max() - z.min()) // 3)] = 0
  g = _gates(_verts(ct, _edit(mask, part)))
  assert g['L1'] == ['level_order'] and g['T11'] == g['T12'] == g['L2'] == [], g
  # level_order by position: T12 and L1 labels swapped
  swap = lab.copy()
  swap[lab == value['T12']], swap[lab == value['L1']] = value['L1'], value['T12']
  verts = _verts(ct, _edit(mask, swap))
  assert _gates(verts)['L1'] == ['level_order'] and not verts['L1']['qc_pass']
  assert 'lies above its cranial neighbour T12' in verts['L1']['qc'][0]['detail']


def test_patient_summary_takes_the_lowest_passing_dxa_level():
  def vert(level, t, ok=True):
    return dict(level=level, dxa_level=level in P.LABELED_LEVELS, qc_pass=ok,
                devices={'hologic': dict(t_score=t, p_osteoporosis=0.1 - (t or 0) / 100)})
  verts = [vert('T12', None), vert('L1', -1.5), vert('L2', -3.0, ok=False), vert('L3', -2.6),
           vert('L4', -0.5)]
  s = predict.patient_summary(verts, ['hologic'])
  assert s['levels'] == ['L1', 'L3', 'L4'] and s['flagged'] == ['L2']
  assert s['devices']['hologic'] == dict(t_score_min=-2.6, level='L3', who_class='osteoporosis',
                                         p_osteoporosis_max=pytest.approx(0.126))
  s = predict.patient_summary([vert('L1', -3.0), vert('L2', -3.0, ok=False)], ['hologic'])
  assert s['devices']['hologic']['who_class'] == 'too few vertebrae'


# ---------------------------------------------------------------------------- DICOM series
def test_series_selection_picks_the_axial_original_series(tmp_path):
  made = _torso()
  ct = made['ct']
  study = tmp_path / 'study'
  io.write_dicom_series(ct, str(study / '2_axial'), tags={'0008|0008': 'ORIGINAL\\PRIMARY\\AXIAL',
                                                          '0020|0011': '2'})
  io.write_dicom_series(ct, str(study / '3_mpr'), tags={'0008|0008': 'DERIVED\\SECONDARY\\MPR',
                                                        '0020|0011': '3'})
  scout = sitk.Image([64, 64, 2], sitk.sitkInt16) - 1000
  scout.SetDirection((1, 0, 0, 0, 0, 1, 0, -1, 0))                     # coronal
  io.write_dicom_series(scout, str(study / '1_scout'),
                        tags={'0008|0008': 'ORIGINAL\\PRIMARY\\LOCALIZER', '0020|0011': '1'})
  cor = sitk.Image([64, 64, 40], sitk.sitkInt16) + 40
  cor.SetDirection((1, 0, 0, 0, 0, 1, 0, -1, 0))
  io.write_dicom_series(cor, str(study / '4_coronal'), tags={'0008|0008': 'ORIGINAL\\PRIMARY'})
  img, rec = io.read_ct(str(study))
  assert rec['picked']['folder'] == '2_axial' and rec['candidates'] == 4
  np.testing.assert_array_equal(sitk.GetArrayFromImage(img), sitk.GetArrayFromImage(ct))
  why = {o['folder']: ' '.join(o['reasons']) for o in rec['others']}
  assert all(w in why['1_scout'] for w in ('localizer', 'not axial', '2 slices < 20'))
  assert 'not ORIGINAL\\PRIMARY' in why['3_mpr'] and 'not axial' in why['4_coronal']
  # the same series in one flat folder: still the axial original one
  flat = tmp_path / 'flat'
  flat.mkdir()
  for sub in ('2_axial', '1_scout', '3_mpr'):
    for f in os.listdir(study / sub):
      os.rename(study / sub / f, flat / f'{sub}_{f}')
  _, rec = io.read_ct(str(flat))
  assert rec['picked']['series_number'] == '2' and rec['candidates'] == 3
  with pytest.raises(io.OsteoDataError, match='no axial ORIGINAL.PRIMARY CT series of >= 20 '
                                               'slices among 1: .*not axial'):
    io.read_ct(str(study / '4_coronal'))


# ------------------------------------------------------------------------------ with a model
@pytest.fixture(scope='module')
def model(tmp_path_factory):
  """A tiny fine-tuning workdir (untrained tiny model, saved as finetune.run saves), loaded."""
  work = tmp_path_factory.mktemp('finetune')
  c = finetune_config.get_config('tiny')
  io.atomic_write_text(work / 'config.json', c.to_json_best_effort(indent=1))
  io.atomic_write_text(work / finetune.BMD_STATS,
                       json.dumps({d: [0.95, 0.15] for d in finetune.DEVICES}))
  optim = c.optim.copy_and_resolve_references()
  with optim.unlocked():
    optim.warmup_steps = 0
  net = finetune.build_model(c)
  state = finetune.init_state(c, net, c.data.roi_shape, optim, 1)
  ckpt = lib.Checkpoints(str(work))
  ckpt.save(1, state, force=True)
  ckpt.close()
  return predict.Model(str(work))


def _write(made, path, fmt):
  torso.write_torso(made, str(path), fmt)
  return str(path / torso.CT_NAMES[fmt]), str(path / torso.MASK_NAMES[fmt])


def test_dicom_series_predicts_as_the_nifti(model, tmp_path):
  made = _torso(seed=1)
  a = predict.predict_study(model, *_write(made, tmp_path / 'n', 'nifti'), 'verse', 'F')[0]
  b = predict.predict_study(model, *_write(made, tmp_path / 'd', 'dicom'), 'verse', 'F')[0]
  assert a['series'] is None and b['series']['picked']['slices'] == made['ct'].GetSize()[2]
  assert [v['level'] for v in a['vertebrae']] == [v['level'] for v in b['vertebrae']]
  for va, vb in zip(a['vertebrae'], b['vertebrae']):
    assert va['qc'] == vb['qc'] and va['roi_mean_hu'] == pytest.approx(vb['roi_mean_hu'], abs=0.05)
    for d in model.devices:
      assert va['devices'][d]['bmd'] == pytest.approx(vb['devices'][d]['bmd'], abs=2e-4)
      assert va['devices'][d]['p_osteoporosis'] == pytest.approx(
          vb['devices'][d]['p_osteoporosis'], abs=2e-4)
  assert a['patient'] == b['patient']
  # the predictions depend on the input: another torso reads differently
  other = _write(_torso(seed=5), tmp_path / 'o', 'nifti')
  c = predict.predict_study(model, *other, 'verse', 'F')[0]
  assert c['vertebrae'][0]['devices']['hologic'] != a['vertebrae'][0]['devices']['hologic']


def test_batch_records_failures_and_a_rerun_skips_finished_studies(model, tmp_path, capsys):
  made = _torso(seed=2)
  ct_n, mask_n = _write(made, tmp_path / 'nifti', 'nifti')
  ct_d, mask_d = _write(made, tmp_path / 'dicom', 'dicom')
  shifted = sitk.Cast(made['ct'], sitk.sitkFloat32) + 40.0
  sitk.WriteImage(shifted, str(tmp_path / 'shifted.nii.gz'))
  with open(ct_n, 'rb') as f:
    raw = gzip.decompress(f.read())
  with gzip.open(tmp_path / 'corrupt.nii.gz', 'wb') as f:
    f.write(raw[:len(raw) // 2])                                       # truncated
  manifest = tmp_path / 'studies.csv'
  manifest.write_text('study,ct,mask,sex,phase\n'
                      's1,nifti/ct.nii.gz,nifti/mask.nii.gz,F,\n'
                      'bad,corrupt.nii.gz,nifti/mask.nii.gz,F,\n'
                      's2,dicom/ct_dicom,dicom/mask.nii.gz,female,portal_venous\n'
                      's3,shifted.nii.gz,nifti/mask.nii.gz,M,\n')
  out = tmp_path / 'out'
  cli = runpy.run_path(os.path.join(ROOT, 'tools', 'predict.py'))['main']
  args = ['--manifest', str(manifest), '--checkpoint', model.workdir, '--labels', 'verse',
          '--calibrate', '--out', str(out)]
  assert io.run_cli(cli, args) == 1                    # a study failed: exit status 1
  printed = capsys.readouterr().out
  assert '[predict] 2/4 bad: failed; error: ' in printed and '3 ok, 0 skipped, 1 failed' in printed
  assert '3/4 s2: ok; series ' in printed and 'ct_dicom (' in printed
  with open(out / predict.RUN_RECORD, encoding='utf-8') as f:
    run = json.load(f)
  status = {s['study']: s for s in run['studies']}
  assert [status[s]['status'] for s in ('s1', 'bad', 's2', 's3')] == ['ok', 'failed', 'ok', 'ok']
  assert 'corrupt.nii.gz' in status['bad']['error'] and 'truncated' in status['bad']['error']
  with open(os.path.join(model.workdir, 'config.json'), 'rb') as f:
    assert run['config_digest'] == hashlib.sha256(f.read()).hexdigest()
  assert run['osteojax_version'] and 'git_revision' in run and run['finished'] >= run['started']
  assert run['checkpoint'] == model.workdir and not (out / 'bad' / predict.REPORT).exists()
  for s in ('s1', 's2', 's3'):
    assert (out / s / predict.FIGURE).stat().st_size > 10_000
  reps = {}
  for s in ('s1', 's2', 's3'):
    with open(out / s / predict.REPORT, encoding='utf-8') as f:
      reps[s] = json.load(f)
  assert reps['s2']['phase'] == 'portal_venous' and 'no HU correction' in reps['s2']['warnings'][0]
  assert reps['s1']['phase'] == 'native' and reps['s1']['warnings'] == []
  assert reps['s2']['sex'] == 'F' and reps['s2']['series']['picked']['folder'] == '.'
  # calibration: the +40 HU study reads as the original within a few HU, and so it predicts
  cal1, cal3 = reps['s1']['calibration'], reps['s3']['calibration']
  assert cal3['applied'] and cal3['intercept'] == pytest.approx(cal1['intercept'] - 40, abs=3)
  for v1, v3 in zip(reps['s1']['vertebrae'], reps['s3']['vertebrae']):
    assert v3['roi_mean_hu'] == pytest.approx(v1['roi_mean_hu'], abs=3)
  # tables: one row per vertebra of the finished studies, one per patient
  import pandas as pd
  vt = pd.read_csv(out / predict.VERTEBRA_CSV)
  pt = pd.read_csv(out / predict.PATIENT_CSV)
  assert list(pt.study) == ['s1', 's2', 's3'] and len(vt) == 3 * len(reps['s1']['vertebrae'])
  assert {'t_hologic', 'who_ge_lunar', 'p_medix', 'qc'} <= set(vt.columns)
  row = pt.set_index('study').loc['s1']
  assert row['t_min_hologic'] == reps['s1']['patient']['devices']['hologic']['t_score_min']
  assert row['slope'] == pytest.approx(cal1['slope'])

  # rerun: the finished studies are skipped (their files untouched), the bad one tried again
  stamp = {s: os.stat(out / s / predict.REPORT).st_mtime_ns for s in ('s1', 's2', 's3')}
  with gzip.open(tmp_path / 'corrupt.nii.gz', 'wb') as f:
    f.write(raw)                                                       # mended
  run = predict.run_batch(str(manifest), model, str(out), calibrate=True,
                          labels_default='verse', log=None)
  assert [s['status'] for s in run['studies']] == ['skipped', 'ok', 'skipped', 'skipped']
  assert {s: os.stat(out / s / predict.REPORT).st_mtime_ns for s in stamp} == stamp
  assert list(pd.read_csv(out / predict.PATIENT_CSV).study) == ['s1', 'bad', 's2', 's3']
  # results of another model in the same folder: refused before anything runs
  rep = dict(reps['s1'], config_digest='0' * 64)
  io.atomic_write_text(out / 's1' / predict.REPORT, json.dumps(rep))
  with pytest.raises(io.OsteoDataError, match='predicted by another model'):
    predict.run_batch(str(manifest), model, str(out), labels_default='verse', log=None)
  # rows without a labels value and no --labels: refused with the line, before anything runs
  with pytest.raises(io.OsteoDataError, match=r'line 2: no labels value .* no --labels'):
    predict.run_batch(str(manifest), model, str(tmp_path / 'out2'), log=None)
  assert not (tmp_path / 'out2').exists()


def test_cli_help_and_single_study_errors(model, tmp_path, capsys):
  cli = runpy.run_path(os.path.join(ROOT, 'tools', 'predict.py'))['main']
  with pytest.raises(SystemExit):
    cli(['--help'])
  text = capsys.readouterr().out
  assert '--manifest studies.csv' in text and '--ct CT.nii.gz --mask MASK.nii.gz' in text
  with pytest.raises(SystemExit):
    cli(['--checkpoint', model.workdir, '--out', str(tmp_path / 'x'), '--ct', 'a.nii.gz'])
  assert 'one study needs --ct, --mask, --sex and --labels' in capsys.readouterr().err
  # single study with calibration: refused with one line when the references are implausible
  made = _torso(seed=3)
  ct, mask = _write(made, tmp_path / 't', 'nifti')
  arr = sitk.GetArrayFromImage(made['ct'])
  sitk.WriteImage(_edit(made['ct'], np.where(arr < -500, -800, arr).astype(np.int16)),
                  str(tmp_path / 'noair.nii.gz'))
  rc = io.run_cli(cli, ['--ct', str(tmp_path / 'noair.nii.gz'), '--mask', mask, '--checkpoint',
                        model.workdir, '--labels', 'verse', '--sex', 'M', '--calibrate',
                        '--out', str(tmp_path / 'bad')])
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 2 and not (tmp_path / 'bad').exists()
  assert err[-1].startswith(f'error: {tmp_path / "noair.nii.gz"}: calibration: air outside')
  assert io.run_cli(cli, ['--ct', ct, '--mask', mask, '--checkpoint', model.workdir, '--labels',
                          'verse', '--sex', 'M', '--phase', 'arterial', '--out',
                          str(tmp_path / 'one')]) == 0
  printed = capsys.readouterr().out
  assert 'warning: arterial phase' in printed and 'patient hologic: lowest T over L1 L2' in printed
  with open(tmp_path / 'one' / predict.REPORT, encoding='utf-8') as f:
    rep = json.load(f)
  assert rep['calibration'] == {'applied': False} and rep['phase'] == 'arterial'
