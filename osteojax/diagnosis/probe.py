"""Linear probes of a frozen pre-trained encoder: does pre-training put bone in the features?

Embeddings: the encoder's pooled features (before any projection head) of the labeled
vertebrae's original volumes (pool channel 0); the encoder is config.model, taken from the
checkpoint of any pre-training method (TP-SwAV, SwAV, MAE, VoCo, SwinMM, Alice). Batch statistics: 'running' uses the encoder's
running averages from pre-training; 'recompute' re-estimates every BatchNorm's statistics on the
probe's own inputs first (precise BN: the mean over batches of the batch statistics). TP-SwAV's
running averages mix the original volume with the four texture maps, whose intensities differ,
while the probe and fine-tuning feed the original volume alone (docs/diagnosis.md, "Recipe choices").
Probes, fitted by 5-fold cross-validation over the labeled train + valid vertebrae, folds
grouped by patient and stratified by label (test is never touched):
  - osteoporosis (site-device label): logistic regression -> ROC AUC,
  - BMD (site-device reading, standardised per device: the encoder does not see the device):
    ridge regression, its penalty chosen by inner leave-one-out (RidgeCV) -> R^2.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from sklearn import linear_model, metrics, model_selection, pipeline, preprocessing

from osteojax import models
from osteojax.diagnosis import pool_data, pretrain
from osteojax.errors import ConfigError
from osteojax.train import lib, pretrained

BN_MODES = ('running', 'recompute')


def load_encoder_state(config, workdir: str | None, input_shape, step: int | None = None):
  """(encoder, its {'params', 'batch_stats'}) of config.model: the sub-module 'encoder' of
  workdir's checkpoint (newest, or `step`) of any pre-training method, or (workdir None) a
  random init of config.seed: for TP-SwAV / SwAV the init of the whole pre-training model, the
  step 0 of its run; for the other methods the encoder's own."""
  encoder = models.encoder_from_config(config.model)
  if workdir is not None:
    pre_config, variables, _ = pretrained.load_encoder(workdir, step)
    want = jax.eval_shape(lambda: encoder.init(jax.random.PRNGKey(0), jnp.zeros(
        (1,) + tuple(input_shape) + (1,)), False))['params']
    shapes = lambda t: jax.tree_util.tree_map(lambda a: tuple(a.shape), t)
    if shapes(variables['params']) != shapes(want):
      raise ConfigError(f'the encoder in {workdir} (model {dict(pre_config.model)}) does not '
                        f'match config.model; probe with the settings it was trained with')
  elif 'swav' in config:
    model = pretrain.build_model(config)
    state = pretrain.init_state(config, model, input_shape, pretrain.optimizer_config(config, 1),
                                1)
    variables = {'params': state.params['encoder'],
                 'batch_stats': state.batch_stats.get('encoder', {})}
  else:
    init = encoder.init(jax.random.PRNGKey(config.seed),
                        jnp.zeros((1,) + tuple(input_shape) + (1,)), False)
    variables = {'params': init['params'], 'batch_stats': init.get('batch_stats', {})}
  return encoder, jax.tree_util.tree_map(jnp.asarray, variables)


def _batches(pools: pool_data.PoolSet, batch: int):
  for i in range(0, len(pools), batch):
    yield pools.read(range(i, min(i + batch, len(pools))))[:, 0, ..., None]


def recompute_batch_stats(model, variables, pools: pool_data.PoolSet, batch: int = 32):
  """variables with every BatchNorm's statistics re-estimated on the original volumes of pools.

  Each full batch goes through the model in training mode from zero running averages, so the
  updated averages are (1 - momentum) x that batch's statistics; their mean over batches,
  divided by (1 - momentum), is the precise-BN estimate.
  """
  if not variables['batch_stats']:           # no BatchNorm (the transformers): nothing to redo
    return variables
  zeros = jax.tree_util.tree_map(jnp.zeros_like, variables['batch_stats'])

  def one(x):
    _, new = model.apply({'params': variables['params'], 'batch_stats': zeros}, x, train=True,
                         mutable=['batch_stats'])
    return new['batch_stats']

  fn = jax.jit(jax.vmap(one, axis_name=lib.AXIS))
  total, n = None, 0
  for x in _batches(pools, batch):
    if len(x) < batch:
      continue
    s = jax.tree_util.tree_map(lambda a: a[0], fn(jnp.asarray(x)[None]))
    total = s if total is None else jax.tree_util.tree_map(jnp.add, total, s)
    n += 1
  if n == 0:
    raise ValueError(f'recomputing batch statistics needs at least {batch} vertebrae')
  momentum = 0.9        # resnet3d / heads BatchNorm momentum
  stats = jax.tree_util.tree_map(lambda a: a / (n * (1 - momentum)), total)
  if 'queue' in variables['batch_stats']:
    stats['queue'] = variables['batch_stats']['queue']
  return {'params': variables['params'], 'batch_stats': stats}


def embeddings(encoder, variables, pools: pool_data.PoolSet, batch: int = 32) -> np.ndarray:
  """Encoder features [N, F] (evaluation mode) of the original volume of every ROI in pools."""
  fn = jax.jit(lambda x: encoder.apply(variables, x, False))
  return np.concatenate([np.asarray(fn(jnp.asarray(x))) for x in _batches(pools, batch)])


def probe_scores(features: np.ndarray, rows, seed: int = 0) -> dict:
  """Cross-validated osteoporosis AUC and BMD R^2 of linear probes on `features`."""
  y = rows.label.astype(int).to_numpy()
  groups = rows.patient_id.to_numpy()
  bmd = rows.bmd.to_numpy(float)
  z = np.zeros_like(bmd)
  for d in rows.device.unique():
    m = (rows.device == d).to_numpy()
    z[m] = (bmd[m] - bmd[m].mean()) / max(bmd[m].std(), 1e-9)
  folds = list(model_selection.StratifiedGroupKFold(5, shuffle=True, random_state=seed)
               .split(features, y, groups))
  clf = pipeline.make_pipeline(preprocessing.StandardScaler(),
                               linear_model.LogisticRegression(max_iter=5000, C=0.1))
  p = model_selection.cross_val_predict(clf, features, y, cv=folds, method='predict_proba')[:, 1]
  reg = pipeline.make_pipeline(preprocessing.StandardScaler(),
                               linear_model.RidgeCV(alphas=np.logspace(-2, 5, 15)))
  zhat = model_selection.cross_val_predict(reg, features, z, cv=folds)
  return dict(auc=float(metrics.roc_auc_score(y, p)), r2=float(metrics.r2_score(z, zhat)),
              n=int(len(y)), positives=int(y.sum()))


def run_probe(config, workdir: str | None, step: int | None = None, bn: str = 'recompute',
              pools: pool_data.PoolSet | None = None) -> dict:
  """Probe the encoder of workdir's checkpoint (newest, or `step`; None: random init of
  config.seed) with batch statistics `bn` (BN_MODES)."""
  if bn not in BN_MODES:
    raise ConfigError(f'unknown bn mode {bn!r}; known: {", ".join(BN_MODES)}')
  pools = pools or pool_data.ensure_pool(config, ('train', 'valid'), progress=False)
  encoder, variables = load_encoder_state(config, workdir, pools.shape[2:], step)
  if bn == 'recompute':
    variables = recompute_batch_stats(encoder, variables, pools)
  return probe_scores(embeddings(encoder, variables, pools), pools.rows, config.seed)
