"""Linear probes of a frozen pre-trained encoder: does pre-training put bone in the features?

Embeddings: the encoder's pooled features (before the projection head, running batch
statistics) of the labeled vertebrae's original volumes (pool channel 0). Probes, fitted by
5-fold stratified cross-validation over the labeled train + valid vertebrae (the default valid
split alone holds a handful of positives; test is never touched):
  - osteoporosis (site-device label): logistic regression -> ROC AUC,
  - BMD (site-device reading, standardised per device): ridge regression, its penalty chosen
    by inner leave-one-out (RidgeCV) -> R^2.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from sklearn import linear_model, metrics, model_selection, pipeline, preprocessing

from osteojax import pretrain
from osteojax.data import pool_data
from osteojax.train import lib


def load_encoder_state(config, workdir: str | None, input_shape):
  """(model, variables) from the newest checkpoint in workdir, or random init when None."""
  model = pretrain.build_model(config)
  optim = pretrain.optimizer_config(config, 1)
  state = pretrain.init_state(config, model, input_shape, optim, 1)
  if workdir is not None:
    state, step = lib.Checkpoints(workdir).restore(state)
    if step == 0:
      raise FileNotFoundError(f'no checkpoint in {workdir}/checkpoints')
  return model, {'params': state.params, 'batch_stats': state.batch_stats}


def embeddings(model, variables, pools: pool_data.PoolSet, batch: int = 32) -> np.ndarray:
  """Encoder features [N, F] of the original volume of every ROI in pools."""
  fn = jax.jit(lambda x: model.apply(variables, x, method=model.embed))
  out = []
  for i in range(0, len(pools), batch):
    x = pools.read(range(i, min(i + batch, len(pools))))[:, 0, ..., None]
    out.append(np.asarray(fn(jnp.asarray(x))))
  return np.concatenate(out)


def probe_scores(features: np.ndarray, rows, seed: int = 0) -> dict:
  """Cross-validated osteoporosis AUC and BMD R^2 of linear probes on `features`."""
  y = rows.label.astype(int).to_numpy()
  bmd = rows.bmd.to_numpy(float)
  z = np.zeros_like(bmd)
  for d in rows.device.unique():
    m = (rows.device == d).to_numpy()
    z[m] = (bmd[m] - bmd[m].mean()) / max(bmd[m].std(), 1e-9)
  folds = model_selection.StratifiedKFold(5, shuffle=True, random_state=seed)
  clf = pipeline.make_pipeline(preprocessing.StandardScaler(),
                               linear_model.LogisticRegression(max_iter=5000, C=0.1))
  p = model_selection.cross_val_predict(clf, features, y, cv=folds, method='predict_proba')[:, 1]
  reg = pipeline.make_pipeline(preprocessing.StandardScaler(),
                               linear_model.RidgeCV(alphas=np.logspace(-2, 5, 15)))
  zhat = model_selection.cross_val_predict(reg, features, z, cv=folds.split(features, y))
  return dict(auc=float(metrics.roc_auc_score(y, p)), r2=float(metrics.r2_score(z, zhat)),
              n=int(len(y)), positives=int(y.sum()))


def run_probe(config, workdir: str | None) -> dict:
  """Probe the encoder of workdir's newest checkpoint (None: random init of config.seed)."""
  pools = pool_data.ensure_pool(config, ('train', 'valid'), progress=False)
  model, variables = load_encoder_state(config, workdir, pools.shape[2:])
  return probe_scores(embeddings(model, variables, pools), pools.rows, config.seed)
