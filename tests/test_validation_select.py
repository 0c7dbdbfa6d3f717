"""lib.fit with a validation function: the best checkpoint is kept, and a run interrupted
between evaluations resumes to the same history and the same chosen state."""
import json

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from osteojax.train import lib


def _state():
  return lib.TrainState.create(apply_fn=None, params={'w': jnp.zeros(())},
                               tx=optax.sgd(0.02), batch_stats={})


def _loss(params, batch_stats, batch, rng, step):
  del rng, step
  return (params['w'] - batch['target'][0]) ** 2, (batch_stats, {})


def _eval(state):
  w = float(state.params['w'])
  return {'score': -(w - 1.0) ** 2, 'w': w}       # best when w passes 1.0 on its way to 3


class Interrupt(RuntimeError):
  pass


def _fit(workdir, stop_at=None, total=30):
  def make_batch(step):
    if stop_at is not None and step == stop_at:
      raise Interrupt(f'killed at step {step}')
    return {'target': np.full((1,), 3.0, np.float32)}
  return lib.fit(workdir=str(workdir), state=_state(), loss_fn=_loss, make_batch=make_batch,
                 total_steps=total, seed=0, batch_size=1, log_every=100, ckpt_every=100,
                 eval_fn=_eval, eval_every=3)


def test_best_checkpoint_and_resume(tmp_path):
  best = _fit(tmp_path / 'ref')
  hist = json.loads((tmp_path / 'ref' / 'validation.json').read_text(encoding='utf-8'))
  steps = [e['step'] for e in hist['entries']]
  assert steps == list(range(3, 31, 3))
  ws = np.array([e['w'] for e in hist['entries']])
  k = int(np.argmax([e['score'] for e in hist['entries']]))
  assert hist['best_step'] == steps[k] and 0 < k < len(steps) - 1     # an interior optimum
  assert float(best.params['w']) == pytest.approx(ws[k], rel=1e-6)
  assert abs(float(best.params['w']) - 1.0) < abs(ws[-1] - 1.0)      # not the last state

  with pytest.raises(Interrupt):
    _fit(tmp_path / 'cut', stop_at=17)                  # after the evaluation at step 15
  again = _fit(tmp_path / 'cut')
  hist2 = json.loads((tmp_path / 'cut' / 'validation.json').read_text(encoding='utf-8'))
  assert [e['step'] for e in hist2['entries']] == steps
  np.testing.assert_allclose([e['w'] for e in hist2['entries']], ws, rtol=1e-6)
  assert float(again.params['w']) == pytest.approx(float(best.params['w']), rel=1e-6)


def test_truncate_forgets_what_came_after_the_checkpoint(tmp_path):
  h = lib.ValidationHistory(str(tmp_path))
  s = _state()
  for step, score in ((3, 0.5), (6, 0.9), (9, 0.7)):
    h.record(step, {'score': score}, s.replace(step=step))
  h.close()
  h = lib.ValidationHistory(str(tmp_path))
  assert h.best_entry()['step'] == 6
  h.truncate(4)                                        # resumed from the checkpoint of step 4
  assert [e['step'] for e in h.entries] == [3] and h.best_entry()['step'] == 3
  _, step = h.restore_best(s)
  assert step == 3
  h.close()


def test_ema_update_by_hand():
  import flax
  import jax
  s = lib.TrainState.create_with_ema(apply_fn=None, params={'w': jnp.zeros(())},
                                     tx=optax.sgd(0.5), batch_stats={}, ema_decay=0.75)
  step = lib.make_train_step(_loss)
  p = lib.replicate(s)
  batch = lib.shard({'target': np.full((1,), 2.0, np.float32)})
  p, _ = step(p, batch, jax.random.PRNGKey(0))
  p, _ = step(p, batch, jax.random.PRNGKey(0))
  out = flax.jax_utils.unreplicate(p)
  # sgd 0.5 on (w - 2)^2: w 0 -> 2 -> 2; ema 0 -> 0.25 * 2 = 0.5 -> 0.75 * 0.5 + 0.25 * 2 = 0.875
  assert float(out.params['w']) == pytest.approx(2.0)
  assert float(out.averaged()['params']['w']) == pytest.approx(0.875)


def test_multitask_selection_score_by_hand():
  """finetune.selection_metrics: AUC + BMD R^2, each computed by hand; 'auc' ignores BMD."""
  from osteojax.diagnosis import finetune
  y = [0, 0, 1, 1]
  prob = [0.1, 0.6, 0.4, 0.9]            # pairs (pos > neg): 3 of 4 -> AUC 0.75
  bmd = np.array([1.0, 0.9, 0.7, 0.6])
  good = bmd + np.array([0.05, -0.05, 0.05, -0.05])   # SS_res 0.01, SS_tot 0.1 -> R^2 0.9
  bad = np.full(4, 1.2)                  # SS_res 0.04+0.09+0.25+0.36 = 0.74 -> R^2 -6.4
  m = finetune.selection_metrics(y, prob, bmd, good)
  assert m['auc'] == pytest.approx(0.75) and m['bmd_r2'] == pytest.approx(0.9)
  assert m['bmd_mae'] == pytest.approx(0.05) and m['score'] == pytest.approx(1.65)
  assert finetune.selection_metrics(y, prob, bmd, bad)['score'] == pytest.approx(0.75 - 6.4)
  # a slightly better AUC does not buy a BMD head that has stopped working
  sharper = [0.1, 0.3, 0.4, 0.9]         # AUC 1
  assert (finetune.selection_metrics(y, sharper, bmd, bad)['score']
          < finetune.selection_metrics(y, prob, bmd, good)['score'])
  only = finetune.selection_metrics(y, prob, bmd, bad, select='auc')
  assert only['score'] == pytest.approx(0.75) and only['bmd_r2'] == pytest.approx(-6.4)
  assert finetune.selection_metrics(y, prob)['score'] == pytest.approx(0.75)
  with pytest.raises(ValueError, match='config.select'):
    finetune.selection_metrics(y, prob, select='loss')


def test_bmd_readout_by_hand():
  """config.score='bmd': the diagnosis is ranked by the negated predicted BMD; selection_metrics
  keeps both readouts' AUCs and selects on the chosen one; a model without a BMD head cannot."""
  from osteojax.diagnosis import finetune
  y = [0, 0, 1, 1]
  prob = [0.1, 0.6, 0.4, 0.9]            # AUC 0.75
  bmd = np.array([1.0, 0.9, 0.7, 0.6])
  pred = np.array([0.95, 0.65, 0.70, 0.60])   # -pred ranks: 0.60 > 0.65 > 0.70 > 0.95 -> the
  # positives (0.70, 0.60) beat the negative 0.95 in 2 pairs, and 0.60 beats 0.65: 3 of 4
  pred_r2 = 1 - np.sum((bmd - pred) ** 2) / np.sum((bmd - bmd.mean()) ** 2)
  m = finetune.selection_metrics(y, prob, bmd, pred, score='bmd')
  assert m['auc_bmd'] == pytest.approx(0.75) and m['auc_prob'] == pytest.approx(0.75)
  perfect = np.array([0.95, 0.80, 0.70, 0.60])            # every positive reads lower: AUC 1
  m = finetune.selection_metrics(y, prob, bmd, perfect, score='bmd')
  assert m['auc'] == m['auc_bmd'] == pytest.approx(1.0) and m['auc_prob'] == pytest.approx(0.75)
  r2 = 1 - np.sum((bmd - perfect) ** 2) / np.sum((bmd - bmd.mean()) ** 2)
  assert m['score'] == pytest.approx(1.0 + r2)
  assert finetune.selection_metrics(y, prob, bmd, pred, score='prob')['score'] == pytest.approx(
      0.75 + pred_r2)
  np.testing.assert_allclose(finetune.diagnosis_score(prob, perfect, 'bmd'), -perfect)
  np.testing.assert_allclose(finetune.diagnosis_score(prob, perfect, 'prob'), prob)
  with pytest.raises(ValueError, match='needs the BMD head'):
    finetune.selection_metrics(y, prob, score='bmd')
  with pytest.raises(ValueError, match='config.score'):
    finetune.check_score('logit')


def test_t_score_readout_uses_the_device_and_level_reference():
  """score 't': the predicted reading's T-score against the mean of the women's and men's
  young-adult references of its device at its level (cohort.device_reference), negated."""
  from osteojax.data import cohort
  from osteojax.diagnosis import finetune
  dev = np.array(['hologic', 'hologic', 'ge_lunar', 'medix'])
  lev = np.array(['L1', 'L3', 'L1', 'L4'])
  pred = np.array([0.80, 0.80, 0.90, 0.85])
  want = []
  for d, l, b in zip(dev, lev, pred):
    (mf, sf), (mm, sm) = cohort.device_reference(d, 'F', l), cohort.device_reference(d, 'M', l)
    want.append((b - (mf + mm) / 2) / ((sf + sm) / 2))
  np.testing.assert_allclose(finetune.predicted_t(pred, dev, lev), want, rtol=1e-12)
  # the same reading is a lower T at L3 than at L1 (L3's reference is higher): it ranks higher
  s = finetune.diagnosis_score(None, pred, 't', dev, lev)
  assert s[1] > s[0]
  np.testing.assert_allclose(s, -np.asarray(want), rtol=1e-12)
  y = [0, 1, 0, 1]
  m = finetune.selection_metrics(y, [0.5] * 4, pred, pred, score='t', devices=dev, levels=lev)
  pos, neg = [i for i in range(4) if y[i]], [i for i in range(4) if not y[i]]
  hand = np.mean([float(s[p] > s[n]) for p in pos for n in neg])
  assert m['auc'] == m['auc_t'] == pytest.approx(hand)     # AUC of -T by hand, over the pairs
  with pytest.raises(ValueError, match='devices and levels'):
    finetune.selection_metrics(y, [0.5] * 4, pred, pred, score='t')
  with pytest.raises(ValueError, match='no DXA reference'):
    finetune.predicted_t([0.8], ['hologic'], ['T12'])
  with pytest.raises(ValueError, match='needs the BMD head'):
    finetune.check_score('t', with_bmd=False)


def test_a_replicated_state_compiles_the_step_once():
  """lib.replicate lays the state out as the step's outputs are, so the second call reuses the
  first call's program; flax's replicas alone make the second call compile again."""
  import flax
  import jax
  from jax import monitoring
  compiles = []

  def on_duration(name, secs, **kw):
    if name == '/jax/core/compile/backend_compile_duration':
      compiles.append(name)

  def on_event(name, **kw):
    if name == '/jax/compilation_cache/cache_hits':        # a program loaded from disk
      compiles.append(name)

  monitoring.register_event_duration_secs_listener(on_duration)
  monitoring.register_event_listener(on_event)
  try:
    batch = lib.shard({'target': np.full((1,), 2.0, np.float32)})
    key = jax.random.PRNGKey(0)
    counts = {}
    for name, rep in (('lib', lib.replicate), ('flax', flax.jax_utils.replicate)):
      step = lib.make_train_step(_loss)
      p = rep(_state())
      p, _ = step(p, batch, key)
      first = len(compiles)
      p, _ = step(p, batch, key)
      p, _ = step(p, batch, key)
      counts[name] = len(compiles) - first
  finally:
    monitoring.unregister_event_duration_listener(on_duration)
    monitoring.unregister_event_listener(on_event)
  assert counts == {'lib': 0, 'flax': 1}
