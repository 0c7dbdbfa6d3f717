"""Alice pre-training of nnFormer's encoder (the paper's Table 2 row "nnFormer / Alice"), task
'alice'.

  python -m osteojax.main --config configs/alice.py --workdir runs/alice

Jiang et al., ICCV 2023 ("Anatomical Invariance Modeling and Semantic Alignment for
Self-supervised Learning in 3D Medical Image Analysis"), following its public code
(alibaba-damo-academy/alice) where the paper is silent:
- Anatomical invariance: the two views show the same anatomy in two different scans. Alice
  crops a random point of one CT and, in another CT, the point that a landmark model (SAM)
  matches to it. Our pre-training data are single-vertebra ROIs, each centred on its vertebral
  body, so the ROI is the crop and its vertebra level the landmark: the second view of a
  vertebra is another patient's vertebra of the same level (drawn per step on the host, seeded
  by (seed, step); a level that no other patient has pairs a vertebra with itself). No further
  augmentation: Alice's code computes rotated, noisy copies of its views but feeds the
  originals.
- Student / teacher: both views through the student with 75% of the voxels masked (columns of
  cell x cell squares through the depth, objectives.alice.column_mask; zeroed, as Alice's
  mask_model) and through the teacher unmasked. The mask is drawn per example and view; Alice's
  code draws one per view for the whole batch. Each branch is nnFormer's encoder, its first decoder stage with a reconstruction
  (nnformer3d.DecoderStage; the rest of nnFormer's decoder is left out) and Alice's head (DINO's
  3-layer MLP with an L2-normalised bottleneck and weight-normalised last layers: one for the
  [CLS] feature, the pooled encoder, one for tokens, after a linear map of the encoder's last
  stage tokens or the decoder stage's tokens to the encoder width).
- Semantic alignment (CASA): one cross-attention layer (multi-head attention with residual and
  LayerNorm, then a ReLU MLP with residual and LayerNorm) whose queries are the student's
  encoder tokens and whose keys and values are the student's decoder tokens (student side) or
  the teacher's (teacher side) of the same view.
- Loss (objectives/alice.py): [CLS] self-distillation across the two views, patch
  self-distillation between the two aligned features of each view, and 10 x the reconstruction
  error of the unmasked volumes; teacher temperature 0.01 (0.008 warm-up), student 0.1, centres
  with momentum 0.9, the last layers frozen for the first freeze_last_layer_epochs (Alice's 1
  epoch at `:paper`; 0.1 in the CPU budget, configs/alice.py says why).
- The teacher (encoder, decoder stage, head) is a moving average of the student, its momentum
  rising from momentum_teacher to 1 along a cosine over the run (Alice's 0.996 at `:paper`; 0.9
  in the CPU budget, a time constant of a tenth of its 94 steps). It lives in the train state's batch_stats (like the centres: state
  that no gradient trains) and holds the average before its pending update: each step first
  averages in the weights it receives (the previous step's result), then uses it, so step s
  uses the same teacher as Alice's update after step s - 1; the checkpoint's teacher lacks the
  last update. Alice's code fine-tunes from the student (extract_backbone_weights.py), and so
  does `configs/finetune.py --config.model.name=nnformer3d --config.init.checkpoint=<dir>`
  (params['encoder']).
Simplifications: no dropout (Alice's CASA has 0.1) and no stochastic depth; no absolute position
embedding (Alice's nnFormer adds a fixed random one, nnformer3d's docstring says more); the
teacher's head
is the moving average of the student's (Alice's teacher shares its [CLS] last layer for tokens);
one teacher temperature schedule for both terms (Alice's two have equal values); the project's
AdamW recipe (no weight-decay schedule or gradient clipping).
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from osteojax import models
from osteojax.diagnosis import pretrain
from osteojax.errors import ConfigError
from osteojax.models import nnformer3d
from osteojax.models.heads import l2_normalize
from osteojax.objectives import alice
from osteojax.train import lib

TEACHER = ('encoder', 'decoder', 'head')      # the parts of the student the teacher averages


# ------------------------------------------------------------------------------------ views
class LevelPairs:
  """Same-anatomy partners: for each vertebra, the vertebrae of the same level from other
  patients (itself when there is none)."""

  def __init__(self, levels, patients):
    self.levels = np.asarray(levels)
    self.patients = np.asarray(patients)
    self.groups = {lev: np.flatnonzero(self.levels == lev) for lev in np.unique(self.levels)}

  def candidates(self, i: int) -> np.ndarray:
    group = self.groups[self.levels[i]]
    other = group[self.patients[group] != self.patients[i]]
    return other if len(other) else np.array([i])

  def partners(self, indices, rng: np.random.Generator) -> np.ndarray:
    """One partner per index, uniform over its candidates."""
    out = np.empty(len(indices), np.int64)
    for k, i in enumerate(indices):
      c = self.candidates(int(i))
      out[k] = c[rng.integers(len(c))]
    return out


def partner_rng(seed: int, step: int) -> np.random.Generator:
  """The generator of global step `step`'s partners: a function of (seed, step) alone, so a
  resumed run and any device count pair the same vertebrae."""
  return np.random.default_rng([seed, step, 1])


# ------------------------------------------------------------------------------------ model
class WeightNormDense(nn.Module):
  """Linear map without bias whose kernel columns are scaled to unit norm (weight
  normalisation with its gain fixed at 1: DINO's last layer with norm_last_layer)."""
  features: int

  @nn.compact
  def __call__(self, x):
    v = self.param('kernel', nn.initializers.lecun_normal(), (x.shape[-1], self.features))
    return x @ (v / jnp.linalg.norm(v, axis=0, keepdims=True))


class AliceHead(nn.Module):
  """(pooled [B, C], encoder tokens [B, N, C], decoder tokens [B, M, C']) -> ([CLS] logits
  [B, K], encoder token logits [B, N, K], decoder token logits [B, M, K])."""
  out_dim: int
  hidden_dim: int
  bottleneck_dim: int

  @nn.compact
  def __call__(self, pooled, enc, dec):
    c = pooled.shape[-1]
    mlp = [nn.Dense(self.hidden_dim, name='fc1'), nn.Dense(self.hidden_dim, name='fc2'),
           nn.Dense(self.bottleneck_dim, name='fc3')]

    def project(x):
      x = nn.gelu(mlp[0](x), approximate=False)
      x = mlp[2](nn.gelu(mlp[1](x), approximate=False))
      # F.normalize(x, eps=1e-12) with a finite gradient at 0 (tokens of an all-zero region
      # are exactly 0 at init, where the gradient of jnp.linalg.norm is 0 / 0)
      return l2_normalize(x, eps=1e-12)

    last_tokens = WeightNormDense(self.out_dim, name='last_layer2')
    cls = WeightNormDense(self.out_dim, name='last_layer')(project(pooled))
    enc = last_tokens(project(nn.Dense(c, name='enc_in')(enc)))
    dec = last_tokens(project(nn.Dense(c, name='dec_in')(dec)))
    return cls, enc, dec


class CASA(nn.Module):
  """Alice's conditional anatomical semantic alignment: one cross-attention layer.

  queries [B, N, K], keys/values [B, M, K] -> [B, N, K]: multi-head attention (projections
  without bias, heads x head_dim wide), residual, LayerNorm; ReLU MLP, residual, LayerNorm."""
  heads: int
  head_dim: int
  inner_dim: int

  @nn.compact
  def __call__(self, q, kv):
    b, n, k = q.shape
    h, d = self.heads, self.head_dim
    proj = lambda name, x: nn.Dense(h * d, use_bias=False, name=name)(x).reshape(
        b, x.shape[1], h, d)
    logits = jnp.einsum('bnhd,bmhd->bhnm', proj('w_q', q), proj('w_k', kv)) / math.sqrt(d)
    out = jnp.einsum('bhnm,bmhd->bnhd', jax.nn.softmax(logits, -1), proj('w_v', kv))
    x = nn.Dense(k, use_bias=False, name='fc')(out.reshape(b, n, h * d)) + q
    x = nn.LayerNorm(1e-6, name='attn_norm')(x)
    y = nn.Dense(k, name='ffn2')(nn.relu(nn.Dense(self.inner_dim, name='ffn1')(x)))
    return nn.LayerNorm(1e-6, name='ffn_norm')(x + y)


class AliceModel(nn.Module):
  """nnFormer encoder + its first decoder stage + Alice's head (one branch) and CASA."""
  encoder: nnformer3d.NNFormer3D
  decoder: nnformer3d.DecoderStage
  head: AliceHead
  casa: CASA

  def branch(self, x):
    """[B, D, H, W, 1] -> ([CLS] logits, encoder token logits, decoder token logits,
    reconstruction [B, D, H, W, 1])."""
    feats = self.encoder.features(x)
    dec, recon = self.decoder(feats, x.shape[1:4])
    b, last = x.shape[0], feats[-1]
    cls, enc_t, dec_t = self.head(jnp.mean(last, axis=(1, 2, 3)),
                                  last.reshape(b, -1, last.shape[-1]),
                                  dec.reshape(b, -1, dec.shape[-1]))
    return cls, enc_t, dec_t, recon

  def align(self, query, kv):
    return self.casa(query, kv)

  def __call__(self, x):
    """Every parameter's first use (for init): a branch, then CASA on its own tokens."""
    _, enc_t, dec_t, _ = self.branch(x)
    return self.align(enc_t, dec_t)


def check_config(config):
  """ConfigError (one line) for values Alice cannot use, before any data is built."""
  a, roi_shape = config.alice, tuple(config.data.roi_shape)
  if config.model.name != 'nnformer3d':
    raise ConfigError(f'Alice pre-trains nnFormer: config.model.name must be nnformer3d, got '
                      f'{config.model.name!r}')
  if a.mask_cell <= 0 or any(s % a.mask_cell for s in roi_shape[1:]):
    raise ConfigError(f'alice.mask_cell {a.mask_cell} must divide the ROI height and width '
                      f'{tuple(roi_shape[1:])}')
  if not 0 < a.mask_ratio < 1:
    raise ConfigError(f'alice.mask_ratio must lie in (0, 1), got {a.mask_ratio}')
  if not 0 <= a.momentum_teacher < 1:
    raise ConfigError(f'alice.momentum_teacher must lie in [0, 1), got {a.momentum_teacher}')


def build_model(config) -> AliceModel:
  a, n = config.alice, config.model.nnformer
  enc = models.encoder_from_config(config.model)
  return AliceModel(enc, nnformer3d.DecoderStage(n.heads[-2], n.windows[-1], n.depths[-2]),
                    AliceHead(a.out_dim, a.head_hidden_dim, a.head_bottleneck_dim),
                    CASA(a.casa_heads, a.casa_head_dim, a.casa_inner_dim))


def init_state(config, model, input_shape, optim, total_steps):
  """TrainState: the student's params; batch_stats: the teacher (a copy of the student's
  encoder, decoder stage and head) and the two centres, zeros."""
  x = jnp.zeros((2,) + tuple(input_shape) + (1,), jnp.float32)
  params = jax.jit(lambda k: model.init(k, x)['params'])(jax.random.PRNGKey(config.seed))
  k = config.alice.out_dim
  stats = {'teacher': {name: params[name] for name in TEACHER},
           'center': jnp.zeros((k,), jnp.float32), 'center2': jnp.zeros((k,), jnp.float32)}
  return lib.create_state(apply_fn=model.apply, params=params,
                          tx=lib.make_optimizer(optim, total_steps), batch_stats=stats)


def make_loss_fn(config, model, steps_per_epoch: int, total_steps: int):
  """loss_fn(params, batch_stats, batch, rng, step); batch['query'], batch['anchor']:
  [b, D, H, W], the two views (same level, other patients) of b pairs."""
  a = config.alice
  freeze = int(round(a.freeze_last_layer_epochs * steps_per_epoch))
  warm = int(round(a.teacher_temp_warmup_epochs * steps_per_epoch))

  def loss_fn(params, batch_stats, batch, rng, step):
    x = jnp.stack([batch['query'], batch['anchor']])              # [2, b, D, H, W]
    b, shape = x.shape[1], x.shape[2:]
    keys = lib.example_keys(rng, b)
    mask = jnp.stack([jax.vmap(lambda k, v=v: alice.column_mask(
        jax.random.fold_in(k, v), shape, a.mask_cell, a.mask_ratio))(keys) for v in range(2)])
    # The pending teacher update with the weights this step starts from (see the docstring).
    m = alice.teacher_momentum(jnp.maximum(step - 1, 0), total_steps, a.momentum_teacher)
    teacher = jax.tree_util.tree_map(lambda t, s: m * t + (1 - m) * lax.stop_gradient(s),
                                     batch_stats['teacher'], {n: params[n] for n in TEACHER})
    frozen = step < freeze
    head = {**params['head'], **{n: jax.tree_util.tree_map(
        lambda p: jnp.where(frozen, lax.stop_gradient(p), p), params['head'][n])
        for n in ('last_layer', 'last_layer2')}}
    student = {**params, 'head': head}
    flat = lambda v: v.reshape((2 * b,) + tuple(shape) + (1,))
    s_cls, s_enc, s_dec, recon = model.apply({'params': student}, flat(x * (1 - mask)),
                                             method=model.branch)
    t_cls, _, t_dec, _ = model.apply({'params': teacher}, flat(x), method=model.branch)
    t_cls, t_dec = lax.stop_gradient(t_cls), lax.stop_gradient(t_dec)
    feat1 = model.apply({'params': student}, s_enc, s_dec, method=model.align)
    feat2 = lax.stop_gradient(model.apply({'params': student}, s_enc, t_dec, method=model.align))
    temp = alice.teacher_temperature(step, warm, a.warmup_teacher_temp, a.teacher_temp)
    views = lambda v: v.reshape((2, b) + v.shape[1:])
    l_cls = alice.cls_loss(views(s_cls), views(t_cls), batch_stats['center'], temp,
                           a.student_temp)
    l_patch = alice.patch_loss(views(feat1), views(feat2), batch_stats['center2'], temp,
                               a.student_temp)
    l_recon = alice.recon_loss(recon, flat(x))
    loss = a.lambda_cls * l_cls + a.lambda_patch * l_patch + a.lambda_recon * l_recon
    stats = {'teacher': teacher,
             'center': alice.update_center(batch_stats['center'], t_cls, a.center_momentum,
                                           lib.AXIS),
             'center2': alice.update_center(batch_stats['center2'], feat2, a.center_momentum,
                                            lib.AXIS)}
    return loss, (stats, dict(cls_loss=l_cls, patch_loss=l_patch, recon_loss=l_recon,
                              teacher_momentum=m, masked_fraction=jnp.mean(mask)))

  return loss_fn


def run(config, workdir: str):
  """Pre-train nnFormer's encoder with Alice on the unlabeled vertebrae; checkpoints +
  TensorBoard in workdir."""
  check_config(config)          # bad values stop before the pool is built
  model = build_model(config)
  pools, steps_per_epoch, total, optim = pretrain.unlabeled_pools(config)
  missing = {'level', 'patient_id'} - set(pools.rows.columns)
  if missing:
    raise ConfigError(f'Alice pairs vertebrae of one level from different patients: the '
                      f'pre-training rows lack {", ".join(sorted(missing))}')
  pairs = LevelPairs(pools.rows.level, pools.rows.patient_id)
  n = len(pools)
  state = init_state(config, model, pools.shape[2:], optim, total)
  alone = sum(len(pairs.candidates(i)) == 1 and pairs.candidates(i)[0] == i for i in range(n))
  print(f'[alice] {n} vertebrae of {len(pairs.groups)} levels ({alone} without a same-level '
        f'partner), {steps_per_epoch} steps/epoch x {config.epochs} epochs = {total} steps, '
        f'batch {config.batch_size} pairs on {jax.device_count()} device(s)', flush=True)

  def batch(idx, step):
    partners = pairs.partners(idx, partner_rng(config.seed, step))
    return {'query': pools.read(lib.host_indices(idx))[:, 0],
            'anchor': pools.read(lib.host_indices(partners))[:, 0]}

  return pretrain.fit_unlabeled(config, workdir, state,
                                make_loss_fn(config, model, steps_per_epoch, total), n, optim,
                                total, batch, name='alice')
