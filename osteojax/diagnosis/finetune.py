"""Task 'finetune': the paper's diagnosis model, fine-tuned on labeled vertebrae.

Encoder (ResNet34-3D, optionally initialised from a TP-SwAV / SwAV pre-training workdir) ->
image embedding P -> device-gated mixture of multi-task experts (osteojax/models/moe.py) ->
osteoporosis (CE), standardised BMD (MSE) and vertebra level (CE), weighted by config.loss
(osteojax/objectives/multitask.py). Training goes through the shared step builder and loop
(osteojax/train/lib.py); at the end the model predicts the valid and test splits and writes
`<workdir>/predictions.csv` (one row per vertebra: prob, bmd_pred, level_pred, gate), which
tools/evaluate.py turns into the paper's per-site tables.

Inputs are channel 0 of the texture pool (the normalised original volume), the same input
the pre-trained encoder saw, flipped and perturbed in HU within the scanners' variation
(osteojax/data/augment.py). Labels: osteoporosis on the site's own DXA device (WHO), that
device's BMD reading in g/cm2 (standardised with the training split's mean and SD over all
devices, so the makers' calibration differences stay in the target; per device with
config.loss.bmd_standardise='device'; kept in `<workdir>/bmd_stats.json`), and the level index
(T1..T12, L1..L6 -> 0..17). The validation split is predicted every config.eval_every_epochs;
the epoch with the best validation AUC (vertebrae, all sites pooled) makes the predictions
(`<workdir>/validation.json`, `<workdir>/validation_curve.png`).
"""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pandas as pd

from osteojax import models
from osteojax.data import augment, cohort, io
from osteojax.diagnosis import pool_data
from osteojax.data import params as P
from osteojax.errors import ConfigError
from osteojax.evaluate import diagnosis, metrics
from osteojax.models import moe
from osteojax.objectives import multitask
from osteojax.texture import pool
from osteojax.train import lib, pretrained

DEVICES = P.DEVICE_NAMES
BMD_STATS = 'bmd_stats.json'
PREDICTIONS = 'predictions.csv'
ID_COLUMNS = ['roi_id', 'patient_id', 'site', 'split', 'device', 'level', 'label', 'bmd']


# ------------------------------------------------------------------------------------ labels
def device_index(devices) -> np.ndarray:
  """DXA device names -> indices into P.DEVICE_NAMES; an unknown device is an error."""
  devices = [str(d) for d in devices]
  unknown = sorted(set(devices) - set(DEVICES))
  if unknown:
    raise ValueError(f'unknown DXA device(s) {unknown}; known: {", ".join(DEVICES)}')
  return np.array([DEVICES.index(d) for d in devices], np.int32)


def level_index(levels) -> np.ndarray:
  """Level names (T1..T12, L1..L6) -> 0..17; an unknown level is an error."""
  levels = [str(v) for v in levels]
  unknown = sorted(set(levels) - set(P.LEVEL_INDEX))
  if unknown:
    raise ValueError(f'unknown vertebra level(s) {unknown}; known: {", ".join(P.LEVELS)}')
  return np.array([P.LEVEL_INDEX[v] for v in levels], np.int32)


BMD_STANDARDISE = ('global', 'device')
CLASS_WEIGHTS = ('none', 'balanced')


def bmd_stats(rows: pd.DataFrame, mode: str = 'global') -> dict:
  """{device: (mean, sd)} that standardise the BMD target, from the training rows.

  'global': one mean and SD over every training reading, the same for each known device, so
  the target stays in g/cm2 up to one affine map (the makers' calibration differences remain
  for the device gate to learn). 'device': per DXA device (removes them; an ablation).
  """
  if mode not in BMD_STANDARDISE:
    raise ConfigError(f'unknown bmd_standardise {mode!r}; known: {", ".join(BMD_STANDARDISE)}')
  for d, g in rows.groupby('device'):
    if not np.isfinite(g.bmd.to_numpy(float)).all():
      raise ValueError(f'training rows of device {d!r} have missing/non-finite bmd')
  if mode == 'global':
    b = rows.bmd.to_numpy(float)
    return {d: (float(b.mean()), float(max(b.std(), 1e-6))) for d in DEVICES}
  return {str(d): (float(g.bmd.mean()), float(max(g.bmd.to_numpy(float).std(), 1e-6)))
          for d, g in rows.groupby('device')}


def class_weights(labels, mode: str) -> np.ndarray:
  """Per-example weights of the class loss: 'none' ones, 'balanced' n / (2 n_class)."""
  y = np.asarray(labels, int)
  if mode not in CLASS_WEIGHTS:
    raise ConfigError(f'unknown class_weight {mode!r}; known: {", ".join(CLASS_WEIGHTS)}')
  if mode == 'none':
    return np.ones(len(y), np.float32)
  counts = np.bincount(y, minlength=2)
  if (counts == 0).any():
    raise ValueError('class_weight balanced needs both classes in the training split')
  return (len(y) / (2 * counts[y])).astype(np.float32)


def standardise_bmd(bmd, devices, stats) -> np.ndarray:
  mean, sd = _per_row(devices, stats)
  return ((np.asarray(bmd, float) - mean) / sd).astype(np.float32)


def unstandardise_bmd(z, devices, stats) -> np.ndarray:
  mean, sd = _per_row(devices, stats)
  return np.asarray(z, float) * sd + mean


def _per_row(devices, stats):
  missing = sorted(set(map(str, devices)) - set(stats))
  if missing:
    raise ValueError(f'no BMD statistics for device(s) {missing} (the training split has '
                         f'none of them); known: {", ".join(sorted(stats))}')
  mean = np.array([stats[str(d)][0] for d in devices])
  sd = np.array([stats[str(d)][1] for d in devices])
  return mean, sd


def label_arrays(rows: pd.DataFrame, stats: dict, class_weight: str = 'none') -> dict:
  """Per-row training targets and inputs other than the image."""
  if rows.label.isna().any():
    raise ValueError('labeled rows without an osteoporosis label (label column is empty)')
  label = rows.label.to_numpy(np.int32)
  return dict(device=device_index(rows.device), label=label,
              bmd_z=standardise_bmd(rows.bmd, rows.device, stats),
              level=level_index(rows.level), class_weight=class_weights(label, class_weight))


# ------------------------------------------------------------------------------------ model
def build_model(config) -> moe.DiagnosisModel:
  h = config.head
  return moe.DiagnosisModel(models.encoder_from_config(config.model),
                            moe.DiagnosisHead(h.num_experts, h.hidden_dim, len(DEVICES), h.moe,
                                              h.get('device_embed_std', 0.0)))


def init_variables(config, model, input_shape):
  x = jnp.zeros((2,) + tuple(input_shape) + (1,), jnp.float32)
  return jax.jit(lambda k, v, d: model.init(k, v, d, train=False))(   # one compilation
      jax.random.PRNGKey(config.seed), x, jnp.zeros((2,), jnp.int32))


def load_pretrained_encoder(pre_workdir: str, params, batch_stats, input_shape):
  """Replace the encoder's params and batch statistics by a pre-training run's (orbax)."""
  del input_shape   # the checkpoint is read without a template
  pre_config, enc, _ = pretrained.load_encoder(pre_workdir)
  enc_p, enc_s = enc['params'], enc['batch_stats']
  shapes = lambda t: jax.tree_util.tree_map(lambda a: tuple(a.shape), t)
  if shapes(enc_p) != shapes(params['encoder']):
    raise ConfigError(f'the encoder in {pre_workdir} (model {dict(pre_config.model)}) does not '
                      f'match config.model; fine-tune with the same encoder settings')
  return ({**params, 'encoder': jax.tree_util.tree_map(jnp.asarray, enc_p)},
          {**batch_stats, 'encoder': jax.tree_util.tree_map(jnp.asarray, enc_s)})


def init_state(config, model, input_shape, optim, total_steps) -> lib.TrainState:
  variables = init_variables(config, model, input_shape)
  params, stats = variables['params'], variables.get('batch_stats', {})   # none: Swin
  if config.init.checkpoint:
    params, stats = load_pretrained_encoder(config.init.checkpoint, params, stats, input_shape)
  return lib.create_state(apply_fn=model.apply, params=params,
                          tx=lib.make_optimizer(optim, total_steps),
                          batch_stats=stats,
                          ema_decay=config.optim.get('ema_decay', 0.0))


def make_loss_fn(config, model):
  """loss_fn(params, batch_stats, batch, rng, step) for the shared step builder.

  batch: image [b, D, H, W], device [b], label [b], bmd_z [b], level [b] (local shard).
  """
  a = config.augment

  def loss_fn(params, batch_stats, batch, rng, step):
    del step
    x = batch['image']
    keys = lib.example_keys(rng, x.shape[0])
    x = jax.vmap(lambda v, k: augment.augment_original(
        v, k, a.flip_prob, a.intensity, pool.HU_WINDOW, a.get('shift_vox', 0)))(x, keys)
    out, new_vars = model.apply({'params': params, 'batch_stats': batch_stats}, x[..., None],
                                batch['device'], train=True, mutable=['batch_stats'])
    loss, metrics = multitask.multitask_loss(out, batch, config.loss)
    return loss, (new_vars.get('batch_stats', {}), metrics)

  return loss_fn


# ------------------------------------------------------------------------------------ predict
def make_predict_fn(model):
  """The compiled eval-mode forward (variables, images [b, D, H, W], devices [b]) -> outputs;
  build it once and pass it to predict to serve many calls without recompiling."""
  return jax.jit(lambda v, x, d: model.apply(v, x[..., None], d, train=False))


def predict(model, variables, images, devices, batch: int = 32, fn=None) -> dict:
  """Outputs for images [N, D, H, W] (float32, pool-normalised) and device indices [N].

  Returns numpy: prob [N] (P(osteoporosis)), bmd_z [N], level [N] (argmax index), gate [N, E].
  Batches are padded to `batch` so that one compiled function serves every call; fn (from
  make_predict_fn) reuses a compiled function across calls.
  """
  fn = fn or make_predict_fn(model)
  outs = []
  n = len(images)
  for i in range(0, n, batch):
    x, d = images[i:i + batch], devices[i:i + batch]
    pad = batch - len(x)
    if pad:
      x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
      d = np.concatenate([d, np.zeros(pad, d.dtype)])
    o = jax.device_get(fn(variables, jnp.asarray(x), jnp.asarray(d)))
    outs.append(jax.tree_util.tree_map(lambda v: v[:batch - pad], o))
  o = jax.tree_util.tree_map(lambda *v: np.concatenate(v), *outs)
  prob = np.asarray(jax.nn.softmax(o['osteo_logits'], -1)[:, 1])
  return dict(prob=prob, bmd_z=o['bmd'], level=np.argmax(o['level_logits'], -1), gate=o['gate'])


def predict_pools(model, variables, pools: pool_data.PoolSet, stats: dict,
                  batch: int = 32, with_bmd: bool = True, score: str = 'prob') -> pd.DataFrame:
  """The predictions table of every ROI in pools (osteojax/evaluate/diagnosis.py's columns).

  with_bmd=False (a model trained without the BMD loss): bmd_pred is NaN, not an untrained output.
  score='bmd' / 't': the table's `score` column, which ranks and thresholds the diagnosis, is
  the negated predicted BMD or its T-score (see diagnosis_score); 'prob': no score column, prob
  ranks.
  """
  check_score(score, with_bmd)
  rows = pools.rows
  dev = device_index(rows.device)
  fn = make_predict_fn(model)                   # compiled once for every chunk
  parts = []
  for i in range(0, len(pools), 256):           # bounded memory on large splits
    idx = np.arange(i, min(i + 256, len(pools)))
    parts.append(predict(model, variables, pools.read(idx)[:, 0], dev[idx], batch, fn=fn))
  o = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
  df = rows[[c for c in ID_COLUMNS if c in rows]].copy()
  df['prob'] = o['prob']
  df['bmd_pred'] = unstandardise_bmd(o['bmd_z'], rows.device, stats) if with_bmd else np.nan
  df['level_pred'] = [P.LEVELS[i] for i in o['level']]
  for j in range(o['gate'].shape[1]):
    df[f'gate_{j}'] = o['gate'][:, j]
  if score != 'prob':
    df['score'] = diagnosis_score(df.prob.to_numpy(), df.bmd_pred.to_numpy(), score,
                                  df.device.to_numpy(), df.level.to_numpy())
  return df


def load(workdir: str):
  """(config, model, variables, bmd stats) of a fine-tuning workdir's chosen checkpoint: the
  best on validation (<workdir>/best), or the newest good one for runs without validation."""
  for name in ('config.json', BMD_STATS):
    if not os.path.exists(os.path.join(workdir, name)):
      raise FileNotFoundError(f'{workdir}: no {name}; not a fine-tuning workdir')
  with open(os.path.join(workdir, 'config.json'), encoding='utf-8') as f:
    config = ml_collections.ConfigDict(json.load(f))
  if config.task != 'finetune':
    raise ConfigError(f'{workdir} is a {config.task!r} run, not a fine-tuning run')
  with open(os.path.join(workdir, BMD_STATS), encoding='utf-8') as f:
    stats = json.load(f)
  model = build_model(config)
  template = init_variables(config, model, config.data.roi_shape)
  state = lib.create_state(apply_fn=model.apply, params=template['params'],
                           tx=lib.make_optimizer(_optim(config, 1), 1),
                           batch_stats=template.get('batch_stats', {}),
                           ema_decay=config.optim.get('ema_decay', 0.0))
  if os.path.exists(os.path.join(workdir, lib.ValidationHistory.FILE)):
    history = lib.ValidationHistory(workdir)       # the checkpoint chosen on validation
    state, step = history.restore_best(state)
    history.close()
    where = history.best.directory
  else:                                            # a run without validation: the last one
    state, step = lib.Checkpoints(workdir).restore(state)
    where = f'{workdir}/checkpoints'
  if step == 0:
    raise FileNotFoundError(f'no readable checkpoint in {where}')
  return config, model, state.averaged(), stats


def _optim(config, steps_per_epoch):
  c = config.optim.copy_and_resolve_references()
  with c.unlocked():
    c.warmup_steps = int(c.warmup_epochs * steps_per_epoch)
  return c


# ------------------------------------------------------------------------------------ task
SELECT_RULES = ('auc', 'auc+bmd_r2')
# What ranks the vertebrae for the diagnosis (AUC, thresholds): the class head's P(osteoporosis),
# the BMD head's reading negated ('bmd'), or the T-score of that reading ('t': the label is
# T <= -2.5 against the device's young-adult reference at the vertebra's level). Chosen on the
# validation split (docs/diagnosis.md, "Recipe choices").
SCORES = ('prob', 'bmd', 't')


def check_score(score: str, with_bmd: bool = True) -> None:
  if score not in SCORES:
    raise ConfigError(f'config.score {score!r} is not one of {SCORES}')
  if score in ('bmd', 't') and not with_bmd:
    raise ConfigError(f"config.score {score!r} needs the BMD head: config.loss.bmd > 0 (or "
                      "--config.score=prob for a class-only model)")


def predicted_t(bmd_pred, devices, levels) -> np.ndarray:
  """The predicted readings' T-scores (cohort.reading_t_score); a level without a DXA reference
  is a ConfigError of score 't'."""
  try:
    return cohort.reading_t_score(bmd_pred, devices, levels)
  except ValueError as e:
    raise ConfigError(f"score 't': {e}") from None


def diagnosis_score(prob, bmd_pred, score: str, devices=None, levels=None) -> np.ndarray:
  """The diagnosis ranking score (higher = more likely osteoporosis): prob, -bmd_pred (g/cm2
  of the site's device, so a lower reading ranks higher) or -predicted_t (devices, levels)."""
  if score == 'prob':
    return np.asarray(prob, float)
  if score == 'bmd':
    return -np.asarray(bmd_pred, float)
  return -predicted_t(bmd_pred, devices, levels)


def check_select(select: str) -> None:
  if select not in SELECT_RULES:
    raise ConfigError(f'config.select {select!r} is not one of {SELECT_RULES}')


def check_config(config) -> None:
  """The fine-tuning choices by name, checked before any work: a ConfigError names the bad one."""
  check_select(config.get('select', 'auc+bmd_r2'))
  check_score(config.get('score', 'prob'), config.loss.bmd > 0)
  if config.loss.get('bmd_standardise', 'device') not in BMD_STANDARDISE:
    raise ConfigError(f'unknown config.loss.bmd_standardise {config.loss.bmd_standardise!r}; '
                      f'known: {", ".join(BMD_STANDARDISE)}')
  if config.loss.get('class_weight', 'none') not in CLASS_WEIGHTS:
    raise ConfigError(f'unknown config.loss.class_weight {config.loss.class_weight!r}; known: '
                      f'{", ".join(CLASS_WEIGHTS)}')
  augment.intensity_bounds(config.augment.intensity)
  sv = config.augment.get('shift_vox', 0)
  if isinstance(sv, bool) or not isinstance(sv, int) or sv < 0:
    raise ConfigError(f'config.augment.shift_vox must be a whole number of voxels >= 0, '
                      f'got {sv!r}')


def selection_metrics(y, prob, bmd=None, bmd_pred=None, select: str = 'auc+bmd_r2',
                      score: str = 'prob', devices=None, levels=None) -> dict:
  """Validation metrics of one evaluation and its checkpoint score (higher is better).

  auc is the vertebra AUC of the diagnosis score `score` (diagnosis_score); auc_prob, auc_bmd
  and auc_t (given devices and levels) are the readouts' AUCs where they exist. The
  checkpoint score is that AUC ('auc') or, when BMD is predicted, the AUC plus the BMD R^2
  ('auc+bmd_r2'): both are 1 when perfect, so neither task's best epoch is kept at the other's
  expense (the AUC alone once kept an epoch whose BMD R^2 was below 0).
  """
  check_select(select)
  check_score(score, bmd_pred is not None)
  out = dict(auc_prob=metrics.auc(y, prob), loss_class=metrics.log_loss(y, prob))
  if bmd_pred is not None:
    out['auc_bmd'] = metrics.auc(y, diagnosis_score(prob, bmd_pred, 'bmd'))
    if devices is not None and (score == 't' or set(levels) <= set(P.LABELED_LEVELS)):
      out['auc_t'] = metrics.auc(y, diagnosis_score(prob, bmd_pred, 't', devices, levels))
  if f'auc_{score}' not in out:
    raise ConfigError(f"score {score!r}: selection_metrics needs the vertebrae's devices and "
                      'levels')
  out['auc'] = out[f'auc_{score}']
  out['score'] = out['auc']
  if bmd_pred is not None:
    r = metrics.regression_metrics(bmd, bmd_pred)
    out['bmd_mae'], out['bmd_r2'] = r['mae'], r['r2']
    if select == 'auc+bmd_r2':
      out['score'] = out['auc'] + r['r2']
  return out


def validation_fn(model, pools: pool_data.PoolSet, stats: dict, with_bmd: bool,
                  select: str = 'auc+bmd_r2', score: str = 'prob'):
  """eval_fn(state) for lib.fit: selection_metrics on pools (all sites pooled)."""
  y = pools.rows.label.astype(int).to_numpy()
  images = pools.read(range(len(pools)))[:, 0]
  dev = device_index(pools.rows.device)
  forward = make_predict_fn(model)     # one compilation serves every evaluation

  def fn(state):
    o = predict(model, state.averaged(), images, dev, fn=forward)
    if not with_bmd:
      return selection_metrics(y, o['prob'], select=select)
    return selection_metrics(y, o['prob'], pools.rows.bmd.to_numpy(float),
                             unstandardise_bmd(o['bmd_z'], pools.rows.device, stats), select,
                             score, pools.rows.device.to_numpy(), pools.rows.level.to_numpy())

  return fn


def validation_auc(entry: dict) -> float:
  """The validation AUC of one validation.json entry (histories written before config.select
  have only 'score', which was the AUC)."""
  return entry['auc'] if 'auc' in entry else entry['score']


def read_validation(workdir: str) -> tuple[list, int]:
  """(entries, index of the kept one) of <workdir>/validation.json, one entry per evaluation."""
  with open(os.path.join(workdir, lib.ValidationHistory.FILE), encoding='utf-8') as f:
    h = json.load(f)
  return h['entries'], [e['step'] for e in h['entries']].index(h['best_step'])


def plot_validation(workdir: str, steps_per_epoch: int) -> str:
  """<workdir>/validation_curve.png: validation AUC (and class loss) against epochs."""
  import matplotlib
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt
  entries, kept = read_validation(workdir)
  ep = np.array([e['step'] for e in entries]) / steps_per_epoch
  fig, ax = plt.subplots(figsize=(5, 3.2))
  ax.plot(ep, [validation_auc(e) for e in entries], 'o-', label='validation AUC')
  if all('bmd_r2' in e for e in entries):
    ax.plot(ep, [e['bmd_r2'] for e in entries], '^-', c='tab:green', ms=4,
            label='validation BMD R$^2$')
  ax.axvline(entries[kept]['step'] / steps_per_epoch, ls=':', c='grey', label='kept')
  ax.set(xlabel='epoch', ylabel='vertebra AUC / BMD R$^2$ (validation)')
  ax2 = ax.twinx()
  ax2.plot(ep, [e['loss_class'] for e in entries], 's--', c='tab:red', ms=3,
           label='validation class loss')
  ax2.set_ylabel('class log-loss', color='tab:red')
  fig.legend(loc='lower center', fontsize=7, ncol=3)
  fig.tight_layout(rect=(0, 0.08, 1, 1))
  path = os.path.join(workdir, 'validation_curve.png')
  with io.atomic_path(path) as tmp:
    fig.savefig(tmp, dpi=120)
  plt.close(fig)
  return path


def run(config, workdir: str):
  """Fine-tune on the train split; predictions of valid + test in <workdir>/predictions.csv."""
  check_config(config)                # before any pool is built or file written
  os.makedirs(workdir, exist_ok=True)
  train = lib.primary_first(lambda: pool_data.ensure_pool(config, ('train',)), 'pool')
  n = len(train)
  if config.batch_size > n:
    raise ConfigError(f'batch_size {config.batch_size} exceeds the {n} training vertebrae')
  stats = bmd_stats(train.rows, config.loss.get('bmd_standardise', 'device'))
  if jax.process_index() == 0:        # one writer when several processes share the workdir
    io.atomic_write_text(os.path.join(workdir, BMD_STATS), json.dumps(stats, indent=1))
  arrays = label_arrays(train.rows, stats, config.loss.get('class_weight', 'none'))
  steps_per_epoch = max(n // config.batch_size, 1)
  total = config.epochs * steps_per_epoch
  optim = _optim(config, steps_per_epoch)
  model = build_model(config)
  state = init_state(config, model, train.shape[2:], optim, total)
  init = config.init.checkpoint or 'scratch'
  print(f'[finetune] {n} vertebrae, {steps_per_epoch} steps/epoch x {config.epochs} epochs = '
        f'{total} steps, batch {config.batch_size} on {jax.device_count()} device(s); encoder '
        f'from {init}; head {"MoE x%d" % config.head.num_experts if config.head.moe else "single"}'
        f'; loss weights {dict(config.loss)}', flush=True)

  def make_batch(step):
    idx = lib.host_indices(lib.batch_indices(n, config.batch_size, config.seed, step))
    return dict(image=train.read(idx)[:, 0], **{k: v[idx] for k, v in arrays.items()})

  with_bmd = config.loss.bmd > 0
  valid = lib.primary_first(lambda: pool_data.ensure_pool(config, ('valid',), progress=False),
                            'pool')
  eval_every = max(int(round(config.get('eval_every_epochs', 1) * steps_per_epoch)), 1)
  state = lib.fit(workdir=workdir, state=state, loss_fn=make_loss_fn(config, model),
                  make_batch=make_batch, total_steps=total, seed=config.seed,
                  batch_size=config.batch_size, log_every=config.log_every,
                  ckpt_every=config.ckpt_every, lr_fn=lib.make_schedule(optim, total),
                  name='finetune', eval_fn=validation_fn(model, valid, stats, with_bmd,
                                                        config.get('select', 'auc+bmd_r2'),
                                                        config.get('score', 'prob')),
                  eval_every=eval_every)
  evals = lib.primary_first(
      lambda: pool_data.ensure_pool(config, ('valid', 'test'), progress=False), 'pool')

  def write_reports():              # process 0 alone: the figure, predictions and tables
    print(f'[finetune] validation curve: {plot_validation(workdir, steps_per_epoch)}',
          flush=True)
    preds = predict_pools(model, state.averaged(), evals, stats, with_bmd=with_bmd,
                          score=config.get('score', 'prob'))
    report(preds, workdir)
    return preds

  return lib.primary_only(write_reports, 'report')


def report(preds: pd.DataFrame, workdir: str, name: str = 'model') -> dict:
  """Write <workdir>/predictions.csv and its evaluation (<workdir>/eval); print the tables."""
  path = os.path.join(workdir, PREDICTIONS)
  diagnosis.write_predictions(preds, path)
  out = os.path.join(workdir, 'eval')
  summary = diagnosis.write_report({name: preds}, out)
  print(diagnosis.markdown_report(summary), flush=True)
  print(f'[finetune] predictions: {path}; tables and ROC curves: {out}/', flush=True)
  return summary
