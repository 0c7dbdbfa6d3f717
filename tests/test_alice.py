"""Alice: same-level partners against explicit index computations, column masks by their cells,
columns and fraction, the gradients of the assembled loss (freeze, teacher), the losses,
schedules and CASA on tiny hand-made inputs against numpy, 1 vs 4 devices, and Alice ->
fine-tuning end to end (tiny)."""
import math
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import multidevice
import pretrain_finetune
from osteojax.diagnosis import pretrain, pretrain_alice
from osteojax.errors import ConfigError
from osteojax.objectives import alice
from osteojax.train import lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'configs'))
import alice as alice_config  # noqa: E402


def test_level_pairs_against_explicit_candidates():
  """Each vertebra's partners: the same level, another patient; itself when none exists."""
  levels = ['L1', 'L1', 'L2', 'L1', 'T12', 'L2', 'L6']
  patients = ['a', 'b', 'a', 'a', 'c', 'b', 'd']
  pairs = pretrain_alice.LevelPairs(levels, patients)
  explicit = []
  for i in range(len(levels)):
    c = [j for j in range(len(levels)) if levels[j] == levels[i] and patients[j] != patients[i]]
    explicit.append(c or [i])
  # patient a has two L1 vertebrae (0 and 3): neither is the other's partner
  assert explicit[0] == [1] and explicit[3] == [1] and explicit[1] == [0, 3]
  assert explicit[4] == [4] and explicit[6] == [6]
  for i, c in enumerate(explicit):
    assert pairs.candidates(i).tolist() == c
  idx = np.array([1, 1, 2, 4, 0, 5, 6, 3] * 50)
  got = pairs.partners(idx, pretrain_alice.partner_rng(3, 7))
  assert all(p in explicit[i] for i, p in zip(idx, got))
  assert set(got[idx == 1].tolist()) == {0, 3}                     # both candidates drawn
  np.testing.assert_array_equal(got, pairs.partners(idx, pretrain_alice.partner_rng(3, 7)))
  assert not np.array_equal(got, pairs.partners(idx, pretrain_alice.partner_rng(3, 8)))


def test_column_mask_cells_columns_and_fraction():
  """Cells of 4 x 4 voxels over H x W = 8 x 12 (6 cells), ceil(0.75 x 6) = 5 masked: each
  (y, x) column masked at every depth or none, whole cells, 5 / 6 of the voxels; each cell
  masked about 5 / 6 of the time over many keys, and different keys give different masks."""
  shape, cell, ratio = (3, 8, 12), 4, 0.75
  masks = np.asarray(jax.vmap(lambda k: alice.column_mask(k, shape, cell, ratio))(
      jax.random.split(jax.random.PRNGKey(5), 600)))
  assert set(np.unique(masks)) == {0.0, 1.0}
  per_column = masks.sum(1)                                     # [600, 8, 12] masked depths
  assert set(np.unique(per_column)) == {0.0, 3.0}               # constant along depth
  cells = per_column.reshape(600, 2, 4, 3, 4) / 3               # [key, cell row, y, cell col, x]
  assert (cells.min((2, 4)) == cells.max((2, 4))).all()         # whole cells
  per_cell = cells[:, :, 0, :, 0].reshape(600, 6)
  np.testing.assert_array_equal(per_cell.sum(1), 5)             # 5 of the 6 cells
  np.testing.assert_allclose(masks.mean((1, 2, 3)), 5 / 6, rtol=1e-6)
  np.testing.assert_allclose(per_cell.mean(0), 5 / 6, atol=0.05)   # each cell alike
  assert len({tuple(c) for c in per_cell}) == 6                 # all 6 choices of the free cell


def _np_softmax(v):
  e = np.exp(v - v.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_losses_against_numpy():
  """Alice's loss.py on a hand-made batch (2 views, 3 examples, 2 tokens, 4 dimensions)."""
  rng = np.random.default_rng(0)
  s_cls, t_cls = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 3, 4))
  s_tok, t_tok = rng.normal(size=(2, 3, 2, 4)), rng.normal(size=(2, 3, 2, 4))
  c1, c2 = rng.normal(size=4) * 0.1, rng.normal(size=4) * 0.1
  tt, st = 0.04, 0.1
  # [CLS]: teacher view q against student view v != q
  terms = []
  for q, v in ((0, 1), (1, 0)):
    t = _np_softmax((t_cls[q] - c1) / tt)
    terms.append(np.mean(np.sum(-t * np.log(_np_softmax(s_cls[v] / st)), -1)))
  got = alice.cls_loss(jnp.asarray(s_cls), jnp.asarray(t_cls), jnp.asarray(c1), tt, st)
  assert float(got) == pytest.approx(np.mean(terms), rel=1e-5)
  # patch: each view against itself, every token
  per = [np.sum(-_np_softmax((t_tok[q, b, n] - c2) / tt) * np.log(_np_softmax(s_tok[q, b, n]
                                                                              / st)))
         for q in range(2) for b in range(3) for n in range(2)]
  got = alice.patch_loss(jnp.asarray(s_tok), jnp.asarray(t_tok), jnp.asarray(c2), tt, st)
  assert float(got) == pytest.approx(np.mean(per), rel=1e-5)
  pred, target = rng.normal(size=(2, 3, 3)), rng.normal(size=(2, 3, 3))
  assert float(alice.recon_loss(jnp.asarray(pred), jnp.asarray(target))) == pytest.approx(
      np.mean((pred - target) ** 2) / 2, rel=1e-5)


def test_center_update_and_schedules():
  t = jnp.arange(24.0).reshape(2, 3, 4)
  got = jax.vmap(lambda x: alice.update_center(jnp.ones(4), x, 0.9, 'i'), axis_name='i')(t[None])
  np.testing.assert_allclose(got[0], 0.9 + 0.1 * np.arange(24.0).reshape(6, 4).mean(0),
                             rtol=1e-6)
  # momentum 0.996 at the first step, (1 + 0.996) / 2 half way, 1 at the end
  for step, want in ((0, 0.996), (50, 0.998), (100, 1.0)):
    assert float(alice.teacher_momentum(step, 100, 0.996)) == pytest.approx(want, abs=1e-7)
  assert float(alice.teacher_temperature(5, 10, 0.008, 0.01)) == pytest.approx(0.009)
  assert float(alice.teacher_temperature(50, 10, 0.008, 0.01)) == pytest.approx(0.01)
  assert float(alice.teacher_temperature(0, 0, 0.008, 0.01)) == pytest.approx(0.01)


def test_casa_against_numpy():
  """CASA: cross-attention (queries from one sequence, keys and values from another), residual
  + LayerNorm, ReLU MLP, residual + LayerNorm."""
  casa = pretrain_alice.CASA(heads=2, head_dim=3, inner_dim=5)
  q = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 6))
  kv = jax.random.normal(jax.random.PRNGKey(1), (2, 7, 6))
  params = casa.init(jax.random.PRNGKey(2), q, kv)['params']
  params = jax.tree_util.tree_map(lambda a: a + 0.05, params)        # non-zero biases
  got = casa.apply({'params': params}, q, kv)
  p = jax.tree_util.tree_map(np.asarray, params)
  ln = lambda v, n: ((v - v.mean(-1, keepdims=True)) / np.sqrt(v.var(-1, keepdims=True) + 1e-6)
                     * p[n]['scale'] + p[n]['bias'])
  qn, kvn = np.asarray(q), np.asarray(kv)
  want = np.zeros(got.shape)
  for b in range(2):
    heads = []
    for h in range(2):
      s = slice(3 * h, 3 * h + 3)
      qq = qn[b] @ p['w_q']['kernel'][:, s]
      kk = kvn[b] @ p['w_k']['kernel'][:, s]
      vv = kvn[b] @ p['w_v']['kernel'][:, s]
      heads.append(_np_softmax(qq @ kk.T / math.sqrt(3)) @ vv)
    x = ln(np.concatenate(heads, -1) @ p['fc']['kernel'] + qn[b], 'attn_norm')
    y = np.maximum(x @ p['ffn1']['kernel'] + p['ffn1']['bias'], 0)
    want[b] = ln(x + y @ p['ffn2']['kernel'] + p['ffn2']['bias'], 'ffn_norm')
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_weight_norm_dense_by_hand():
  """Kernel columns (3, 4) and (0, -2) scaled to unit norm: (0.6, 0.8) and (0, -1), whatever
  the kernel's scale (the gain is fixed at 1)."""
  layer = pretrain_alice.WeightNormDense(2)
  kernel = jnp.array([[3.0, 0.0], [4.0, -2.0]])
  x = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 2.0]])
  want = [[0.6, 0.0], [0.8, -1.0], [2.2, -2.0]]
  np.testing.assert_allclose(layer.apply({'params': {'kernel': kernel}}, x), want, rtol=1e-6)
  np.testing.assert_allclose(layer.apply({'params': {'kernel': 7 * kernel}}, x), want, rtol=1e-6)
  assert layer.init(jax.random.PRNGKey(0), x)['params']['kernel'].shape == (2, 2)


def test_loss_fn_gradients_freeze_and_teacher():
  """Gradients of Alice's assembled loss (tiny, freeze 2 steps, momentum_teacher 0): the last
  layers get none while step < 2 and some from step 2 on; the teacher and the centres get none;
  and the student none through the teacher: with the teacher's weights equal to the student's,
  the student's gradient is the same whether the step's momentum puts weight 0.98 on the
  student (step 2) or 0 (step 11, past the end of the 10-step schedule)."""
  config = alice_config.get_config('tiny')
  config.alice.momentum_teacher, config.alice.freeze_last_layer_epochs = 0.0, 1.0
  model = pretrain_alice.build_model(config)
  state = pretrain_alice.init_state(config, model, (8, 8, 8), pretrain.optimizer_config(
      config, 2), 10)
  stats = dict(state.batch_stats, center=jnp.full((8,), 0.1), center2=jnp.full((8,), -0.1))
  loss_fn = pretrain_alice.make_loss_fn(config, model, steps_per_epoch=2, total_steps=10)
  vol = jax.random.uniform(jax.random.PRNGKey(1), (2, 2, 8, 8, 8))
  batch = {'query': vol[0], 'anchor': vol[1]}

  def loss(params, batch_stats, step):
    return jax.vmap(lambda b: loss_fn(params, batch_stats, b, jax.random.PRNGKey(2), step)[0],
                    axis_name=lib.AXIS)(jax.tree_util.tree_map(lambda a: a[None], batch))[0]

  grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
  biggest = lambda tree: max(float(jnp.abs(a).max()) for a in jax.tree_util.tree_leaves(tree))
  got = {step: jax.device_get(grad(state.params, stats, step)) for step in (1, 2, 11)}
  for step, (g_params, g_stats) in got.items():
    last = biggest([g_params['head'][n] for n in ('last_layer', 'last_layer2')])
    assert (last == 0.0) == (step < 2), (step, last)
    assert biggest(g_params['head']['fc1']) > 0 and biggest(g_params['encoder']) > 0
    assert biggest(g_stats) == 0.0                              # teacher and centres
  np.testing.assert_allclose(alice.teacher_momentum(1, 10, 0.0), 0.0245, atol=1e-4)
  for a, b in zip(jax.tree_util.tree_leaves(got[2][0]), jax.tree_util.tree_leaves(got[11][0])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


def test_config_errors():
  c = alice_config.get_config('tiny')
  pretrain_alice.check_config(c)
  c.model.name = 'swin3d'
  with pytest.raises(ConfigError, match='must be nnformer3d'):
    pretrain_alice.check_config(c)
  c.model.name, c.alice.mask_cell = 'nnformer3d', 5
  with pytest.raises(ConfigError, match='mask_cell 5 must divide'):
    pretrain_alice.check_config(c)


def test_alice_steps_one_and_four_devices_agree():
  """Two Alice steps (student, teacher average, centres) on 1 and 4 simulated devices, one
  pair a device; the teacher each step stores is Alice's moving average of the student."""
  one, four = multidevice.run('pmap_losses.py', 'alice')
  np.testing.assert_allclose(one['losses'], four['losses'], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(one['proto_sum'], four['proto_sum'], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(one['center_sum'], four['center_sum'], rtol=1e-5, atol=1e-6)
  assert len(set(np.round(one['losses'], 4))) > 1
  # each step's stored teacher against the moving average computed from the student's weights
  assert one['teacher_err'] < 1e-6 and four['teacher_err'] < 1e-6


@pytest.mark.slow
def test_alice_then_finetune_tiny(tmp_path):
  """`alice` pre-trains the tiny nnFormer and the fine-tuning task starts from its encoder."""
  r = pretrain_finetune.run(tmp_path, 'alice', 'nnformer3d')
  assert '[alice] done' in r['pre_log'] and f'encoder from {r["pre"]}' in r['ft_log']
  assert r['predictions'].exists() and 0.0 <= r['probe']['auc'] <= 1.0
