"""The unified fine-tuning loss (paper eq. 4): alpha CE(class) + beta MSE(BMD) + gamma CE(level).

The paper's weights are 1.0, 1.0, 0.5; a weight of 0 turns a term off (e.g. class loss only).
BMD is regressed in g/cm2, standardised with the training split's mean and SD over all devices
(per device as an ablation: osteojax/diagnosis/finetune.py, bmd_stats).
"""
from __future__ import annotations

import jax.numpy as jnp
import optax


def multitask_loss(out: dict, batch: dict, weights) -> tuple[jnp.ndarray, dict]:
  """(loss, metrics) of one batch.

  out: DiagnosisHead outputs (osteo_logits [B, 2], bmd [B], level_logits [B, 18]);
  batch: label [B] int 0/1, bmd_z [B] float (standardised), level [B] int 0..17, optional
  class_weight [B] (per-example weight of the class CE, mean 1 over the training set, e.g.
  n / (2 n_class); the batch mean of weight x CE is taken, so device shards agree);
  weights: .cls, .bmd, .level.
  """
  ce = optax.softmax_cross_entropy_with_integer_labels(out['osteo_logits'], batch['label'])
  if 'class_weight' in batch:
    ce = ce * batch['class_weight']
  ce_cls = ce.mean()
  mse = jnp.mean((out['bmd'] - batch['bmd_z']) ** 2)
  ce_level = optax.softmax_cross_entropy_with_integer_labels(out['level_logits'],
                                                             batch['level']).mean()
  loss = weights.cls * ce_cls + weights.bmd * mse + weights.level * ce_level
  acc = jnp.mean(jnp.argmax(out['osteo_logits'], -1) == batch['label'])
  return loss, dict(loss_class=ce_cls, loss_bmd=mse, loss_level=ce_level, train_accuracy=acc)
