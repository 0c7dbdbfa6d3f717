"""Alice's objectives (Jiang et al., ICCV 2023): self-distillation between a masked student and
an EMA teacher on two views of the same anatomy, plus masked image modelling.

As in Alice's public code (alibaba-damo-academy/alice, loss.py, engine_pretrain.py,
utils.py): the [CLS] term is DINO's cross-entropy between the teacher's centred and sharpened
softmax of one view and the student's softmax of the other view; the patch term the same
cross-entropy, per token, between the CASA-aligned features of one view (teacher-side target,
student-side prediction); the reconstruction term the mean squared error of the student's
reconstruction of the unmasked volumes. The teacher's centres are moving averages of its
outputs over the global batch; its weights a moving average of the student's, with a momentum
that rises from its base to 1 along a cosine.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax


def column_mask(key, shape, cell: int, ratio: float):
  """[D, H, W] voxel mask (1 = masked) of one volume: the H x W plane cut into cell x cell
  squares, ceil(ratio x squares) of them drawn at random, each masked through the whole depth
  (Alice's MaskGenerator: a 2-D mask repeated along the third axis, the axial one)."""
  d, h, w = shape
  gh, gw = h // cell, w // cell
  n = gh * gw
  order = jnp.argsort(jax.random.uniform(key, (n,)))
  cells = jnp.zeros((n,), jnp.float32).at[order[:math.ceil(n * ratio)]].set(1.0)
  plane = jnp.repeat(jnp.repeat(cells.reshape(gh, gw), cell, 0), cell, 1)
  return jnp.broadcast_to(plane[None], (d, h, w))


def teacher_momentum(step, total_steps: int, base: float):
  """EMA weight of the teacher's past after optimiser step `step`: base at the first step, 1 at
  the end, along a cosine (Alice's / DINO's cosine_scheduler(base, 1))."""
  return 1 - (1 - base) * (1 + jnp.cos(jnp.pi * step / max(total_steps, 1))) / 2


def teacher_temperature(step, warmup_steps: int, start: float, end: float):
  """Linear warm-up of the teacher temperature from start to end over warmup_steps, then end."""
  if warmup_steps <= 0:
    return jnp.asarray(end, jnp.float32)
  return start + (end - start) * jnp.minimum(step / warmup_steps, 1.0)


def distillation_ce(teacher, student, center, teacher_temp, student_temp):
  """-sum_k softmax((teacher - center) / teacher_temp)_k log softmax(student / student_temp)_k
  over the last axis (the teacher side carries no gradient)."""
  t = lax.stop_gradient(jax.nn.softmax((teacher - center) / teacher_temp, axis=-1))
  return -jnp.sum(t * jax.nn.log_softmax(student / student_temp, axis=-1), axis=-1)


def cls_loss(student, teacher, center, teacher_temp, student_temp):
  """[CLS] term: views [2, b, K]; teacher view q against student view v != q, each the mean
  over the examples, averaged over the two pairs."""
  return (jnp.mean(distillation_ce(teacher[0], student[1], center, teacher_temp, student_temp))
          + jnp.mean(distillation_ce(teacher[1], student[0], center, teacher_temp,
                                     student_temp))) / 2


def patch_loss(student, teacher, center, teacher_temp, student_temp):
  """Patch term: aligned features [2, b, N, K]; each view's teacher-side target against the
  same view's student-side features, per token, the mean over tokens and examples, averaged
  over the views."""
  return jnp.mean(distillation_ce(teacher, student, center, teacher_temp, student_temp))


def recon_loss(pred, target):
  """Half the mean squared error over every voxel of both views (Alice's MSELoss / 2)."""
  return jnp.mean((pred - target) ** 2) / 2


def update_center(center, teacher, momentum: float, axis: str):
  """center <- momentum center + (1 - momentum) mean of the teacher outputs over the global
  batch (and tokens): teacher [..., K], averaged over every leading axis and the devices."""
  mean = lax.pmean(jnp.mean(teacher.reshape(-1, teacher.shape[-1]), axis=0), axis)
  return momentum * center + (1 - momentum) * lax.stop_gradient(mean)
