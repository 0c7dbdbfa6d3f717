"""Fine-tuning: MoE head, unified loss, labels, 1 vs 4 devices, and a tiny end-to-end run."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pandas as pd
import pytest

from osteojax.diagnosis import finetune
from osteojax.models import moe
from osteojax.objectives import multitask

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'configs'))
import finetune as finetune_config  # noqa: E402
import multidevice  # noqa: E402  (tests/multidevice.py)


@pytest.fixture(scope='module')
def moe_head():
  head = moe.DiagnosisHead(num_experts=3, hidden_dim=5, num_devices=3, moe=True)
  p = jax.random.normal(jax.random.PRNGKey(1), (6, 7))
  dev = jnp.array([0, 1, 2, 0, 1, 2])
  params = head.init(jax.random.PRNGKey(0), p, dev)['params']
  return head, params, p, dev


def test_vmapped_experts_equal_a_loop_over_experts(moe_head):
  head, params, p, dev = moe_head
  out = head.apply({'params': params}, p, dev)
  gate = np.asarray(out['gate'])
  d = params['device_embedding']['embedding'][dev]
  logits = (p + d) @ params['gate']['kernel'] + params['gate']['bias']
  np.testing.assert_allclose(gate, jax.nn.softmax(logits), rtol=1e-5, atol=1e-6)
  total = 0
  for i in range(3):                       # expert i's slice of the stacked parameters
    p_i = jax.tree_util.tree_map(lambda a: a[i], params['experts'])
    e_i = moe.Expert(hidden_dim=5).apply({'params': p_i}, p)
    total = total + gate[:, i:i + 1] * np.asarray(e_i)
  ref = moe.split_outputs(total)
  for k in ('osteo_logits', 'bmd', 'level_logits'):
    np.testing.assert_allclose(out[k], ref[k], rtol=1e-5, atol=1e-5)


def test_gate_sums_to_one_and_device_changes_output(moe_head):
  head, params, p, dev = moe_head
  out = head.apply({'params': params}, p, dev)
  np.testing.assert_allclose(np.asarray(out['gate']).sum(1), 1.0, rtol=1e-6)
  other = head.apply({'params': params}, p, (dev + 1) % 3)
  assert np.abs(np.asarray(other['gate']) - np.asarray(out['gate'])).max() > 1e-4
  assert np.abs(np.asarray(other['osteo_logits']) - np.asarray(out['osteo_logits'])).max() > 1e-5
  assert out['osteo_logits'].shape == (6, 2) and out['level_logits'].shape == (6, 18)


def test_device_embedding_init_scale():
  """head.device_embed_std: 0 keeps flax's Embed init (SD 1/sqrt(F)); s > 0 draws D_I at SD s."""
  p, dev = jnp.zeros((3, 256)), jnp.array([0, 1, 2])
  init = lambda s: moe.DiagnosisHead(hidden_dim=4, device_embed_std=s).init(
      jax.random.PRNGKey(0), p, dev)['params']['device_embedding']['embedding']
  default = np.asarray(init(0.0))
  assert default.shape == (3, 256)
  assert 0.8 / 16 < default.std() < 1.2 / 16                  # 1/sqrt(256)
  assert 0.8 < np.asarray(init(1.0)).std() < 1.2


def test_single_head_ignores_device():
  head = moe.DiagnosisHead(hidden_dim=4, moe=False)
  p = jnp.ones((2, 3))
  params = head.init(jax.random.PRNGKey(0), p, jnp.array([0, 1]))['params']
  a = head.apply({'params': params}, p, jnp.array([0, 1]))
  b = head.apply({'params': params}, p, jnp.array([2, 2]))
  np.testing.assert_array_equal(a['osteo_logits'], b['osteo_logits'])


def test_multitask_loss_by_hand():
  out = dict(osteo_logits=jnp.array([[0.0, 1.0], [2.0, 0.0]]), bmd=jnp.array([0.5, -1.0]),
             level_logits=jnp.zeros((2, 18)).at[0, 12].set(1.0))
  batch = dict(label=jnp.array([1, 1]), bmd_z=jnp.array([0.0, 1.0]), level=jnp.array([12, 13]))
  w = ml_collections.ConfigDict(dict(cls=1.0, bmd=1.0, level=0.5))
  loss, m = multitask.multitask_loss(out, batch, w)
  ce1 = -np.log(np.e / (1 + np.e))                   # label 1 with logits (0, 1)
  ce2 = -np.log(1 / (np.e ** 2 + 1))                 # label 1 with logits (2, 0)
  cls = (ce1 + ce2) / 2
  mse = (0.25 + 4.0) / 2
  lv1 = -np.log(np.e / (np.e + 17))                  # level 12, its logit 1, 17 others at 0
  lv2 = np.log(18)                                   # row 2: all 18 logits equal
  level = (lv1 + lv2) / 2
  np.testing.assert_allclose(m['loss_class'], cls, rtol=1e-6)
  np.testing.assert_allclose(m['loss_bmd'], mse, rtol=1e-6)
  np.testing.assert_allclose(m['loss_level'], level, rtol=1e-6)
  np.testing.assert_allclose(loss, cls + mse + 0.5 * level, rtol=1e-6)
  w.bmd, w.level = 0.0, 0.0
  np.testing.assert_allclose(multitask.multitask_loss(out, batch, w)[0], cls, rtol=1e-6)


def test_labels_and_bad_values():
  rows = pd.DataFrame(dict(device=['hologic', 'hologic', 'medix', 'medix'],
                           bmd=[0.9, 1.1, 0.8, 1.0], label=[0, 1, 1, 0],
                           level=['L1', 'L2', 'L3', 'T12']))
  # Global (default): one mean/SD over every reading (0.95, sd of 0.9 1.1 0.8 1.0), so the
  # target keeps the makers' offsets: hologic readings stay above medix ones.
  g = finetune.bmd_stats(rows)
  sd = np.sqrt(np.mean((np.array([0.9, 1.1, 0.8, 1.0]) - 0.95) ** 2))
  for d in ('hologic', 'ge_lunar', 'medix'):
    assert g[d] == pytest.approx((0.95, sd))
  zg = finetune.standardise_bmd(rows.bmd, rows.device, g)
  np.testing.assert_allclose(zg, (np.array([0.9, 1.1, 0.8, 1.0]) - 0.95) / sd, rtol=1e-5)
  # Per device (ablation): each device's own mean/SD, the offsets are gone.
  stats = finetune.bmd_stats(rows, 'device')
  assert stats['hologic'] == pytest.approx((1.0, 0.1))
  assert stats['medix'] == pytest.approx((0.9, 0.1))
  z = finetune.standardise_bmd(rows.bmd, rows.device, stats)
  np.testing.assert_allclose(z, [-1, 1, -1, 1], rtol=1e-5)
  np.testing.assert_allclose(finetune.unstandardise_bmd(z, rows.device, stats), rows.bmd,
                             rtol=1e-6)
  with pytest.raises(ValueError, match='unknown bmd_standardise'):
    finetune.bmd_stats(rows, 'site')
  a = finetune.label_arrays(rows, stats)
  assert list(a['level']) == [12, 13, 14, 11] and list(a['device']) == [0, 0, 2, 2]
  np.testing.assert_array_equal(a['class_weight'], 1.0)
  # balanced: n / (2 n_class): 3 negatives and 1 positive -> 4/6 and 4/2; mean weight 1.
  w = finetune.class_weights([0, 0, 0, 1], 'balanced')
  np.testing.assert_allclose(w, [4 / 6, 4 / 6, 4 / 6, 2.0])
  assert w.mean() == pytest.approx(1.0)
  with pytest.raises(ValueError, match='unknown DXA device'):
    finetune.device_index(['hologic', 'norland'])
  with pytest.raises(ValueError, match='unknown vertebra level'):
    finetune.level_index(['L1', 'S1'])
  with pytest.raises(ValueError, match='no BMD statistics'):
    finetune.standardise_bmd([1.0], ['ge_lunar'], stats)
  with pytest.raises(ValueError, match='without an osteoporosis label'):
    finetune.label_arrays(rows.assign(label=[0, None, 1, 0]), stats)


def test_finetune_one_and_four_devices_agree():
  one, four = multidevice.run('pmap_losses.py', 'finetune')
  assert one['devices'] == 1 and four['devices'] == 4
  np.testing.assert_allclose(one['losses'], four['losses'], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(one['proto_sum'], four['proto_sum'], rtol=1e-5, atol=1e-5)
  assert len(set(np.round(one['losses'], 4))) > 1


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
  """`make run`'s pipeline at tiny size: data -> TP-SwAV -> MoE fine-tune -> evaluation."""
  import default
  from osteojax.diagnosis import pipeline
  tmp = tmp_path_factory.mktemp('slice')
  c = default.get_config('tiny')
  c.data.dir, c.pretrain.epochs = str(tmp / 'data'), 1
  preds = pipeline.run(c, str(tmp))
  return tmp, pipeline.stage_config(c, 'finetune'), preds


def test_tiny_end_to_end_from_pretraining(tiny_run):
  """Predictions of valid/test; the saved checkpoint reloads to the same predictions."""
  tmp, c, preds = tiny_run
  work = tmp / 'finetune'
  assert (tmp / 'data' / 'osteosim_summary.md').exists()
  assert os.listdir(tmp / 'pretrain' / 'checkpoints') and os.listdir(work / 'checkpoints')
  assert set(preds.split) == {'valid', 'test'}
  assert preds.prob.between(0, 1).all() and np.isfinite(preds.bmd_pred).all()
  np.testing.assert_allclose(preds[['gate_0', 'gate_1', 'gate_2']].sum(axis=1), 1.0, rtol=1e-5)
  assert (work / 'eval' / 'results.md').exists() and (work / 'eval' / 'roc_vertebra.png').exists()
  config, model, variables, stats = finetune.load(str(work))
  from osteojax.diagnosis import pool_data
  again = finetune.predict_pools(model, variables,
                                 pool_data.ensure_pool(config, ('valid', 'test'), False), stats,
                                 score='bmd')
  np.testing.assert_allclose(again.prob, preds.prob, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(again.score, -again.bmd_pred)      # the BMD readout
  assert ('score' in preds.columns) == (config.score != 'prob')
  if config.score == 't':             # the default: the T-score of the reading at its device
    want = -finetune.predicted_t(preds.bmd_pred, preds.device, preds.level)
    np.testing.assert_allclose(preds.score, want, rtol=1e-12)
  bad = finetune_config.get_config('tiny')
  bad.data.dir, bad.init.checkpoint = c.data.dir, str(tmp / 'pretrain')
  bad.model.widths = (4, 16)
  with pytest.raises(ValueError, match='does not match config.model'):
    finetune.run(bad, str(tmp / 'bad'))


def test_probe_reads_the_encoder_of_a_checkpoint(tiny_run):
  """probe.load_encoder_state on the tiny run's TP-SwAV workdir: the encoder alone gives the
  SwAV model's own embedding (model.embed with the checkpoint's whole variables), and the random
  init of a method without the SwAV model (MAE's ViT) embeds too."""
  from osteojax.diagnosis import pool_data, pretrain, probe
  from osteojax.train import pretrained
  import mae as mae_config
  tmp, c, _ = tiny_run
  pre = str(tmp / 'pretrain')
  config = pretrained.read_config(pre)
  pools = pool_data.ensure_pool(c, ('valid',), False)
  encoder, variables = probe.load_encoder_state(config, pre, pools.shape[2:])
  got = probe.embeddings(encoder, variables, pools)
  model = pretrain.build_model(config)
  whole, _ = pretrained.load_variables(pre)
  x = jnp.asarray(pools.read(range(len(pools)))[:, 0, ..., None])
  want = model.apply(whole, x, method=model.embed)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert np.abs(got).max() > 0
  m = mae_config.get_config('tiny')
  encoder, variables = probe.load_encoder_state(m, None, pools.shape[2:])
  assert variables['batch_stats'] == {}
  assert probe.recompute_batch_stats(encoder, variables, pools) is variables
  feats = probe.embeddings(encoder, variables, pools)
  assert feats.shape[0] == len(pools) and np.isfinite(feats).all()


def test_evaluate_tool_reads_the_split_asked(tiny_run, tmp_path):
  """tools/evaluate.py on the tiny run: the test split by default, --split valid the validation
  rows; the vertebra AUC over all sites against sklearn's on the rows of that split."""
  from sklearn.metrics import roc_auc_score
  sys.path.insert(0, os.path.join(ROOT, 'tools'))
  import evaluate as evaluate_tool
  tmp, _, _ = tiny_run
  for split in ('test', 'valid'):
    out = tmp_path / split
    args = ['--workdir', str(tmp / 'finetune'), '--name', 'm', '--out', str(out)]
    assert evaluate_tool.main(args + (['--split', split] if split == 'valid' else [])) == 0
    with open(out / 'results.json', encoding='utf-8') as f:
      summary = json.load(f)
    assert summary['split'] == split
    preds = pd.read_csv(tmp / 'finetune' / finetune.PREDICTIONS)
    rows = preds[preds.split == split]
    score = rows.score if 'score' in rows else rows.prob
    got = [r['auc'] for r in summary['models']['m']['per_seed']
           if r['site'] == 'all' and r['level'] == 'vertebra']
    np.testing.assert_allclose(got, [roc_auc_score(rows.label, score)], rtol=1e-9)


def test_predict_on_a_torso_ct(tiny_run, tmp_path, capsys):
  """tools/predict.py: per-vertebra report of a generated torso; clear errors on bad input."""
  from osteojax.diagnosis import predict
  from osteojax.data import torso
  tmp, _, _ = tiny_run
  made = torso.make_torso(torso.TorsoSpec(first='T12', last='L2', convention='verse',
                                          torso_mm=(120.0, 100.0), spacing=(1.2, 1.2, 2.5)),
                          np.random.default_rng(0))
  torso.write_torso(made, tmp_path / 'torso')
  ct, mask = str(tmp_path / 'torso' / 'ct.nii.gz'), str(tmp_path / 'torso' / 'mask.nii.gz')
  res = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'predict.py'), '--ct', ct,
                        '--mask', mask, '--checkpoint', str(tmp / 'finetune'), '--labels', 'verse',
                        '--sex', 'F', '--out', str(tmp_path / 'out')], capture_output=True,
                       encoding='utf-8', errors='replace', env=dict(os.environ, PYTHONPATH=ROOT))
  assert res.returncode == 0, res.stderr[-2000:]
  with open(tmp_path / 'out' / 'prediction.json', encoding='utf-8') as f:
    rep = json.load(f)
  assert [v['level'] for v in rep['vertebrae']] == ['T12', 'L1', 'L2']
  for v in rep['vertebrae']:
    assert set(v['devices']) == {'hologic', 'ge_lunar', 'medix'}
    for d, r in v['devices'].items():
      assert 0 <= r['p_osteoporosis'] <= 1
      if v['level'] == 'T12':
        assert r['t_score'] is None and r['who_class'] == 'no DXA reference'
      else:                           # the T-score is the device's own: recompute it
        from osteojax.data import cohort
        t = cohort.t_score(d, r['bmd'], 'F', v['level'])
        assert abs(r['t_score'] - t) < 0.01
        assert r['who_class'] == predict.who_class(r['t_score'])
  assert (tmp_path / 'out' / 'prediction.png').stat().st_size > 10_000
  assert predict.who_class(-2.5) == 'osteoporosis' and predict.who_class(-1.0) == 'normal'
  assert predict.who_class(-1.01) == 'osteopenia'

  import runpy                         # bad input: the same CLI, in this process
  from osteojax.data import io
  cli = runpy.run_path(os.path.join(ROOT, 'tools', 'predict.py'))['main']

  def err(*args):
    capsys.readouterr()
    rc = io.run_cli(cli, [*args, '--sex', 'F', '--out', str(tmp_path / 'bad')])
    stderr = capsys.readouterr().err
    assert rc == 2 and not (tmp_path / 'bad').exists(), stderr[-2000:]
    return stderr.strip().splitlines()[-1]

  assert 'not a fine-tuning workdir' in err('--ct', ct, '--mask', mask, '--checkpoint',
                                            str(tmp_path / 'none'), '--labels', 'verse')
  assert 'no vertebra in the totalseg' in err('--ct', ct, '--mask', mask, '--checkpoint',
                                              str(tmp / 'finetune'), '--labels', 'totalseg')
  other = torso.make_torso(torso.TorsoSpec(first='T12', last='L2', convention='verse',
                                           torso_mm=(120.0, 100.0), spacing=(1.0, 1.0, 2.0)),
                           np.random.default_rng(0))
  torso.write_torso(other, tmp_path / 'other')
  assert 'error:' in err('--ct', ct, '--mask', str(tmp_path / 'other' / 'mask.nii.gz'),
                         '--checkpoint', str(tmp / 'finetune'), '--labels', 'verse')
