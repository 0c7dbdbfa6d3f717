"""Aligner: InfoNCE by hand, encoders' shapes and norms, augmentation, 1 vs 4 devices, bad input,
an end-to-end tiny run through the entry point and the evaluation CLI."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from osteojax.align import pairs
from osteojax.align import train
from osteojax.data import bodysim
from osteojax.data.io import OsteoDataError
from osteojax.models import spatial
from osteojax.objectives import contrastive

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'configs'))
import align as align_config  # noqa: E402
import multidevice  # noqa: E402  (tests/multidevice.py)


def test_symmetric_infonce_by_hand():
  sim = np.array([[0.9, 0.2], [0.4, 0.5]])
  tau = 0.5
  e = np.exp(sim / tau)
  rows = np.log(e[0, 0] / e[0].sum()) + np.log(e[1, 1] / e[1].sum())
  cols = np.log(e[0, 0] / e[:, 0].sum()) + np.log(e[1, 1] / e[:, 1].sum())
  want = -(rows + cols) / 2
  np.testing.assert_allclose(contrastive.symmetric_infonce(jnp.asarray(sim), tau), want,
                             rtol=1e-6)
  # chance level: all similarities equal -> 2 log N
  np.testing.assert_allclose(contrastive.symmetric_infonce(jnp.zeros((5, 5)), 0.1),
                             2 * np.log(5), rtol=1e-6)
  with pytest.raises(ValueError, match='empty batch'):
    contrastive.symmetric_infonce(jnp.zeros((0, 0)), 0.1)


@pytest.mark.parametrize('encoder', ['spatial', 'pooled'])
def test_encoder_shapes_and_unit_norm(encoder):
  m = spatial.Aligner(encoder, (4, 4, 8), 8, 16, axis_name=None)
  dxa = jax.random.uniform(jax.random.PRNGKey(0), (2, 100, 37, 1))
  mri = jax.random.uniform(jax.random.PRNGKey(1), (2, 63, 28, 2))
  v = m.init(jax.random.PRNGKey(2), dxa, mri, train=False)
  fd, fm = m.apply(v, dxa, mri, train=False)
  if encoder == 'spatial':
    assert fd.shape == (2, 12, 4, 16) and fm.shape == (2, 7, 3, 16)      # 8x down-sampling
  else:
    assert fd.shape == fm.shape == (2, 1, 1, 16)
  np.testing.assert_allclose(jnp.linalg.norm(fd, axis=-1), 1.0, atol=1e-5)
  np.testing.assert_allclose(jnp.linalg.norm(fm, axis=-1), 1.0, atol=1e-5)


def test_augment_translation_and_intensity():
  x = jnp.zeros((6, 5, 1)).at[2, 2, 0].set(1.0)
  seen = set()
  for i in range(40):
    y = train.augment(x, jax.random.PRNGKey(i), 1)
    r, c = np.argwhere(np.asarray(y[..., 0]) > 0)[0]
    seen.add((int(r) - 2, int(c) - 2))
    assert float(y.sum()) == 1.0
  assert seen == {(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1)}
  z = train.augment(jnp.ones((4, 4, 2)) * 0.5, jax.random.PRNGKey(0), 0, brightness=0.2)
  assert 0.4 - 1e-6 <= float(z.mean()) <= 0.6 + 1e-6
  g = {round(float(train.augment(jnp.full((2, 2, 1), 0.25), jax.random.PRNGKey(i),
                                 gamma=(0.5, 1.5))[0, 0, 0]), 4) for i in range(20)}
  assert g == {0.5, 0.125}                       # 0.25 ** 0.5, 0.25 ** 1.5


def test_warp_rotates_about_the_centre():
  """A point r pixels right of the centre moves to (r sin t, r cos t) (rows, cols) from it
  (clockwise on screen, rows down), and warping back by -t restores the image inside."""
  x = np.zeros((41, 41, 1), np.float32)
  x[20, 30, 0] = 1.0
  t = np.deg2rad(10.0)
  y = np.asarray(train.warp(jnp.asarray(x), t, jnp.zeros(2)))[..., 0]
  rr, cc = np.mgrid[:41, :41]
  cy, cx = (y * rr).sum() / y.sum(), (y * cc).sum() / y.sum()
  np.testing.assert_allclose([cy - 20, cx - 20], [10 * np.sin(t), 10 * np.cos(t)], atol=0.05)
  smooth = np.exp(-((rr - 20.0) ** 2 + (cc - 22.0) ** 2) / 30.0)[..., None].astype(np.float32)
  back = train.warp(train.warp(jnp.asarray(smooth), t, jnp.array([2.0, -1.0])), -t,
                    jnp.zeros(2))
  back = train.warp(back, 0.0, jnp.array([-2.0, 1.0]) @ jnp.array(
      [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]).T)     # the shift, rotated by -t
  np.testing.assert_allclose(np.asarray(back)[10:30, 10:30], smooth[10:30, 10:30], atol=0.05)


def test_one_vs_four_devices_same_losses():
  """Global-batch negatives via all_gather and synchronised BN: 4 simulated devices = 1."""
  one, four = multidevice.run('pmap_align.py', 'spatial')
  assert one['devices'] == 1 and four['devices'] == 4
  np.testing.assert_allclose(one['losses'], four['losses'], atol=1e-5)
  np.testing.assert_allclose(one['param_sum'], four['param_sum'], rtol=1e-5)
  assert one['losses'][0] != one['losses'][-1]          # the steps did update the encoders


def test_bad_input_messages():
  cfg = align_config.get_config('tiny')
  d = np.zeros((2, 40, 24, 2), np.float32)
  m = np.zeros((2, 24, 16, 2), np.float32)
  pairs.check_inputs(d, m, 2, 2)
  with pytest.raises(ValueError, match='MRI scans have 3 channels; the encoder expects 2'):
    pairs.check_inputs(d, np.zeros((2, 24, 16, 3), np.float32), 2, 2)
  bad = d.copy()
  bad[1, 3, 3, 0] = np.nan
  with pytest.raises(ValueError, match='DXA scans contain 1 NaN'):
    pairs.check_inputs(bad, m, 2, 2)
  with pytest.raises(ValueError, match='empty batch'):
    pairs.check_inputs(d[:0], m[:0], 2, 2)
  with pytest.raises(ValueError, match="unknown MRI channel"):
    cfg.model.mri_channels = ('fat', 'T2')
    pairs.select_channels(dict(dxa=d, mri=m), cfg)
  with pytest.raises(OsteoDataError, match='pixel spacings differ between modalities'):
    bodysim.check_pair((2.2, 2.2), (2.0, 2.0))


def test_bad_files(tmp_path):
  import SimpleITK as sitk
  img = sitk.GetImageFromArray(np.zeros((10, 8, 3), np.float32), isVector=True)
  sitk.WriteImage(img, str(tmp_path / 'three.nii'))
  with pytest.raises(OsteoDataError, match='expected 2 channels, got 3'):
    bodysim.read_scan(str(tmp_path / 'three.nii'), 2)
  a = np.zeros((10, 8, 2), np.float32)
  a[0, 0, 1] = np.nan
  sitk.WriteImage(sitk.GetImageFromArray(a, isVector=True), str(tmp_path / 'nan.nii'))
  with pytest.raises(OsteoDataError, match='NaN'):
    bodysim.read_scan(str(tmp_path / 'nan.nii'), 2)


@pytest.mark.slow
def test_tiny_run_and_eval_cli(tmp_path):
  """configs/align.py:tiny through `python -m osteojax.main`, then tools/eval_align.py; a run
  folder with spacings that differ between modalities is refused with one line."""
  env = dict(os.environ, PYTHONPATH=ROOT)
  data, work = tmp_path / 'bs', tmp_path / 'run'
  cmd = [sys.executable, '-m', 'osteojax.main', '--config', 'configs/align.py:tiny',
         '--workdir', str(work), f'--config.data.dir={data}', '--config.eval_split=']
  res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, encoding='utf-8',
                       errors='replace', timeout=600)
  assert res.returncode == 0, res.stderr[-3000:]
  assert '[align] done: 2 steps' in res.stdout
  out = tmp_path / 'eval'
  res = subprocess.run([sys.executable, 'tools/eval_align.py', '--workdir', str(work),
                        '--out', str(out), '--table', str(out / 'table.md')], cwd=ROOT, env=env,
                       capture_output=True, encoding='utf-8', errors='replace', timeout=600)
  assert res.returncode == 0, res.stderr[-3000:]
  r = json.load(open(out / 'run' / 'eval_test.json', encoding='utf-8'))
  assert r['n'] == 4 and 0 <= r['metrics']['auc'] <= 1 and r['step'] == 2
  assert r['placement']['pairs'] == 4 and 0 <= r['placement']['within_one_cell'] <= 1
  for p in r['pngs']:
    assert os.path.getsize(p) > 1000
  assert '| run |' in open(out / 'table.md', encoding='utf-8').read()
  # different pixel spacing in one subject's MRI -> a one-line error, exit 2
  mri = data / 'test' / '00001' / 'mri.nii'
  import SimpleITK as sitk
  img = sitk.ReadImage(str(mri))
  img.SetSpacing((4.4, 4.4))
  sitk.WriteImage(img, str(mri))
  res = subprocess.run([sys.executable, 'tools/eval_align.py', '--workdir', str(work)],
                       cwd=ROOT, env=env, capture_output=True, encoding='utf-8',
                       errors='replace', timeout=600)
  assert res.returncode == 2
  assert res.stderr.strip().startswith('error:') and len(res.stderr.strip().splitlines()) == 1
  assert 'pixel spacings differ between modalities' in res.stderr
  # a folder without a checkpoint
  res = subprocess.run([sys.executable, 'tools/eval_align.py', '--workdir', str(tmp_path)],
                       cwd=ROOT, env=env, capture_output=True, encoding='utf-8',
                       errors='replace', timeout=600)
  assert res.returncode == 2 and 'no config.json' in res.stderr


def test_eval_cli_bad_workdir_one_line(tmp_path, capsys):
  sys.path.insert(0, os.path.join(ROOT, 'tools'))
  import eval_align
  from osteojax.data.io import run_cli
  assert run_cli(eval_align.main, ['--workdir', str(tmp_path)]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith('error:') and 'no config.json' in err[0]
  (tmp_path / 'config.json').write_text('{"task": "align"}')
  assert run_cli(eval_align.main, ['--workdir', str(tmp_path)]) == 2
  assert 'no checkpoint' in capsys.readouterr().err


def test_align_tables_plan():
  """The recipe table is evaluated on the validation split only (it chooses the default); the
  paper's tables on test, at their own step count and translation."""
  sys.path.insert(0, os.path.join(ROOT, 'tools'))
  import align_tables
  plan = align_tables.runs([0, 1], ('recipe',))
  assert [r[2] for r in plan] == [f'{r[1]}_seed{s}' for s in (0, 1) for r in align_tables.RECIPES]
  assert all('--config.eval_split=val' in r[4] for r in plan)
  assert [r[5] for r in plan[:len(align_tables.RECIPES)]] == [r[2] for r in align_tables.RECIPES]
  assert align_tables.result_path('R', 'recipe', 'pools1_seed0').endswith('eval_val.json')
  both = align_tables.runs([0], ('channels', 'temperature'))
  assert len(both) == len(align_tables.CHANNELS) + 1 + len(align_tables.TEMPERATURES)
  assert not any('eval_split' in o for r in both for o in r[4])
  assert align_tables.result_path('R', 'temperature', 'tau0.05_seed0').endswith('eval_test.json')
  sched = align_tables.runs([0, 1, 2], ('schedule',))   # chooses the default too: validation only
  assert [r[2] for r in sched] == [f'{n}_seed{s}' for s in (0, 1, 2) for n in ('lr_constant',
                                                                              'lr_cosine')]
  assert all('--config.eval_split=val' in r[4] for r in sched)
  assert {o for r in sched for o in r[4] if 'decay' in o} == {'--config.optim.decay=constant',
                                                            '--config.optim.decay=cosine'}
  assert align_tables.result_path('R', 'schedule', 'lr_cosine_seed2').endswith('eval_val.json')
  steps = align_tables.runs([0], ('steps',))       # so does the training length
  assert [r[2] for r in steps] == ['steps800_seed0', 'steps1600_seed0']
  assert all('--config.eval_split=val' in r[4] for r in steps)
  assert [o for r in steps for o in r[4] if 'steps=' in o] == ['--config.steps=800',
                                                               '--config.steps=1600']
  assert align_tables.result_path('R', 'steps', 'steps1600_seed0').endswith('eval_val.json')
  starts = align_tables.runs([2], ('starts',))     # and the number of starts
  assert [r[2] for r in starts] == ['starts1_seed2', 'starts3_seed2']
  assert [o for r in starts for o in r[4] if 'starts=' in o] == ['--config.starts=1',
                                                                 '--config.starts=3']
  assert all('--config.eval_split=val' in r[4] for r in starts)
  every = align_tables.runs([0], tuple(align_tables.TITLES))   # the other tables: one start
  assert all(r[4].count('--config.starts=1') == 1 for r in every if r[0] != 'starts'), every
  assert all(sum('--config.starts=' in o for o in r[4]) == 1 for r in every), every


def test_every_config_argument_builds_and_scales():
  """Each configs/align.py argument resolves; 'auto' poolings give the paper's 17.6 mm cells
  at 2.2 mm (three) and 8.8 mm (one), and the receptive fields are the hand-computed ones."""
  from osteojax.align import encoders
  got = {}
  for arg in (None, 'paper', 'pooled', 'legacy', 'tiny'):
    got[arg] = encoders.scale_summary(align_config.get_config(arg))
  assert got['paper']['pools'] == 3 and got['paper']['cell_mm'] == pytest.approx(17.6)
  assert got['paper']['receptive_field_px'] == 68                 # the paper's encoder
  assert got[None]['pools'] == 1 and got[None]['cell_mm'] == pytest.approx(17.6)
  assert got[None]['receptive_field_px'] == 30
  assert got['legacy']['pools'] == 3 and got['legacy']['stride_px'] == 8


def test_align_tables_report_the_reference_beside_every_table(tmp_path):
  """--report-only collects finished runs into align_tables.md: each table gets the keypoint
  reference line and an R@1 / reference column (the retrieval ceiling of the same pairs)."""
  import json
  sys.path.insert(0, os.path.join(ROOT, 'tools'))
  import align_tables
  metrics = dict.fromkeys(align_tables.KEYS, 0.5)
  for name, r1 in (('B_F_seed0', 0.4), ('B_F_seed1', 0.6)):
    (tmp_path / name).mkdir()
    (tmp_path / name / 'eval_test.json').write_text(json.dumps(dict(
        metrics={**metrics, 'recall@1': r1}, seed=int(name[-1]), n=100,
        reference={'recall@1': 0.8, 'recall@5': 0.9, 'mean_rank': 1.5},
        recall1_fraction_of_reference=r1 / 0.8)))
  assert align_tables.main(['--root', str(tmp_path), '--seeds', '0,1', '--tables', 'channels',
                            '--report-only']) in (None, 0)
  md = (tmp_path / 'align_tables.md').read_text(encoding='utf-8')
  assert 'Reference (keypoint geometry of the truth on the pixel grid, same pairs): R@1 80.0 %' in md
  row = next(line for line in md.splitlines() if line.startswith('| B_F |'))
  assert row.split(' | ')[2] == '50.0 ± 14.1'                   # R@1 % over the two seeds
  assert row.rstrip(' |').split(' | ')[-1] == '62.5 ± 17.7'      # R@1 / reference %
  table = json.loads((tmp_path / 'align_tables.json').read_text(encoding='utf-8'))
  assert np.allclose(table['tables']['channels']['B_F']['fraction_of_reference'], [0.5, 0.75])


def test_align_tables_record_folder(tmp_path):
  """--record: a finished run's evaluation is copied there, and a run found only there counts
  as finished (not trained again) and enters the table as if its folder were present."""
  import json
  sys.path.insert(0, os.path.join(ROOT, 'tools'))
  import align_tables
  root, record = tmp_path / 'root', tmp_path / 'record'
  res = dict(metrics={**dict.fromkeys(align_tables.KEYS, 0.5), 'recall@1': 0.4}, seed=0, n=100,
             reference=None, recall1_fraction_of_reference=0.5)
  (root / 'B_F_seed0').mkdir(parents=True)
  (root / 'B_F_seed0' / 'eval_test.json').write_text(json.dumps(res))
  record.mkdir()
  (record / 'B_F_seed1.eval_test.json').write_text(json.dumps(dict(
      res, seed=1, metrics={**res['metrics'], 'recall@1': 0.6})))
  assert align_tables.result_path(str(root), 'channels', 'B_F_seed1', str(record)) == str(
      record / 'B_F_seed1.eval_test.json')
  assert align_tables.result_path(str(root), 'channels', 'B_F_seed1') == str(
      root / 'B_F_seed1' / 'eval_test.json')
  # both asked-for runs are finished (one here, one recorded): nothing trains
  assert align_tables.main(['--root', str(root), '--seeds', '0,1', '--tables', 'channels',
                            '--only', 'B_F_seed0,B_F_seed1', '--record', str(record)]) in (None, 0)
  assert json.loads((record / 'B_F_seed0.eval_test.json').read_text(encoding='utf-8')) == res
  row = next(line for line in (root / 'align_tables.md').read_text(encoding='utf-8').splitlines()
             if line.startswith('| B_F |'))
  assert row.split(' | ')[1:3] == ['0,1', '50.0 ± 14.1']


def _starts_config(tmp_path):
  cfg = align_config.get_config('tiny')
  cfg.data.dir, cfg.eval_split = str(tmp_path / 'bs'), ''
  cfg.steps, cfg.ckpt_every, cfg.eval_every, cfg.starts, cfg.start_steps = 3, 1, 1, 2, 1
  return cfg


def test_starts_bad_settings(tmp_path):
  """Bad settings of config.starts stop before training with a clear message."""
  from osteojax.errors import ConfigError
  cfg = _starts_config(tmp_path)
  for change, msg in ((dict(start_steps=3), 'start_steps must be in 1..2'),
                      (dict(eval_every=0), 'needs validation pairs')):
    bad = cfg.copy_and_resolve_references()
    bad.update(change)
    with pytest.raises(ConfigError, match=msg):
      train.run(bad, str(tmp_path / 'bad'))
  os.makedirs(tmp_path / 'plain' / 'checkpoints')
  with pytest.raises(ConfigError, match='trained without starts'):
    train.run(cfg, str(tmp_path / 'plain'))
  assert not os.path.exists(tmp_path / 'bad' / 'checkpoints')
  from osteojax.align import encoders       # the seed a run of several starts trained with
  assert encoders.trained_seed(str(tmp_path / 'plain'), cfg) == cfg.seed
  (tmp_path / 'plain' / encoders.STARTS_FILE).write_text('{"chosen_seed": 1000}')
  assert encoders.trained_seed(str(tmp_path / 'plain'), cfg) == 1000


@pytest.mark.slow
def test_starts_choose_on_validation_and_go_on_as_that_seed(tmp_path):
  """config.starts = 2: two starts train start_steps each, the lower validation mean rank is
  kept, and the run then equals a plain run of the chosen seed (parameters and validation
  history)."""
  from osteojax.train import pretrained
  cfg = _starts_config(tmp_path)
  train.run(cfg, str(tmp_path / 'starts'))
  rec = json.load(open(tmp_path / 'starts' / 'starts.json', encoding='utf-8'))
  assert [r['seed'] for r in rec['starts']] == [0, 1000] and rec['start_steps'] == 1
  assert rec['chosen_seed'] == min(rec['starts'], key=lambda r: r['mean_rank'])['seed']
  plain = cfg.copy_and_resolve_references()
  plain.seed, plain.starts = rec['chosen_seed'], 1
  train.run(plain, str(tmp_path / 'plain'))
  a, _ = pretrained.load_variables(str(tmp_path / 'starts'), 3)
  b, _ = pretrained.load_variables(str(tmp_path / 'plain'), 3)
  jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)
  hist = [json.load(open(tmp_path / w / 'validation.json', encoding='utf-8'))['entries']
          for w in ('starts', 'plain')]
  assert hist[0] == hist[1] and [e['step'] for e in hist[0]] == [1, 2, 3]
  from osteojax.align import retrieval
  (tmp_path / 'starts' / 'config.json').write_text(cfg.to_json_best_effort())  # as tasks.run
  res = retrieval.evaluate_run(str(tmp_path / 'starts'), 'val')
  assert res['seed'] == 0 and res['trained_seed'] == rec['chosen_seed']
