"""Tasks 'tp_swav' and 'swav': self-supervised pre-training of a 3-D encoder on vertebrae.

TP-SwAV (the paper): the two views of a vertebra are two different members of its texture pool
{original, Autocorrelation, JointAverage, Contrast, DifferenceAverage}, each lightly augmented.
SwAV (baseline): the two views are random zoomed crops of the original volume. Everything else
(encoder, heads, Sinkhorn codes over the global batch, swapped-prediction loss, optimiser,
budget) is shared, so the comparison isolates the choice of views.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from osteojax.data import augment, pool_data
from osteojax.models import heads, resnet3d
from osteojax.objectives import swav
from osteojax.train import lib


# ------------------------------------------------------------------------------------ views
def _augment(x, key, c):
  return augment.flip_and_scale(x, key, c.flip_prob, c.intensity)


def pool_views(pool, key, c):
  """TP-SwAV: c.num_views distinct pool members of one vertebra. pool: [P, D, H, W] -> [V, ...]."""
  kp, ka = jax.random.split(key)
  members = jax.random.permutation(kp, pool.shape[0])[:c.num_views]
  views = pool[members]
  return jax.vmap(lambda v, k: _augment(v, k, c))(views, jax.random.split(ka, c.num_views))


def crop_views(pool, key, c):
  """SwAV: c.num_views random zoomed crops of the original (pool[0]). -> [V, D, H, W]."""
  vol = pool[0]
  shape = vol.shape

  def one(k):
    ks, kt, ka = jax.random.split(k, 3)
    frac = jax.random.uniform(ks, (), minval=c.crop_min, maxval=1.0)   # crop edge / volume
    scale = jnp.full((3,), 1.0 / frac)
    # translation so that the crop [o, o + frac * n) fills the output: out = in * s + t
    offset = jax.random.uniform(kt, (3,)) * (1 - frac) * jnp.array(shape)
    out = jax.image.scale_and_translate(vol, shape, (0, 1, 2), scale, -offset * scale, 'linear')
    return _augment(out, ka, c)

  return jax.vmap(one)(jax.random.split(key, c.num_views))


# ------------------------------------------------------------------------------------ model
def build_model(config):
  enc = resnet3d.encoder_from_config(config.model)
  return heads.SwAVModel(enc, config.swav.hidden_dim, config.swav.proj_dim,
                         config.swav.num_prototypes)


def optimizer_config(config, steps_per_epoch):
  """config.optim with warm-up given in steps (the config states it in epochs, as the paper)."""
  c = config.optim.copy_and_resolve_references()
  with c.unlocked():
    c.warmup_steps = int(c.warmup_epochs * steps_per_epoch)
  return c


def init_state(config, model, input_shape, optim, total_steps):
  """Initial TrainState: params from config.seed, unit prototypes, AdamW on the schedule."""
  x = jnp.zeros((2,) + tuple(input_shape) + (1,), jnp.float32)
  variables = model.init(jax.random.PRNGKey(config.seed), x, train=False)
  params = heads.normalize_prototypes(variables['params'])
  return lib.TrainState.create(apply_fn=model.apply, params=params,
                               tx=lib.make_optimizer(optim, total_steps),
                               batch_stats=variables['batch_stats'])


def make_loss_fn(config, model):
  """loss_fn(params, batch_stats, batch, rng, step) for the shared step builder.

  batch['pool']: [b, P, D, H, W] float32 (local shard). Views by config.views: 'pool'|'crops'.
  """
  c = config.swav
  view_fn = {'pool': pool_views, 'crops': crop_views}[config.views]

  def loss_fn(params, batch_stats, batch, rng, step):
    pool = batch['pool']
    b = pool.shape[0]
    keys = lib.example_keys(rng, b)
    views = jax.vmap(lambda p, k: view_fn(p, k, c))(pool, keys)         # [b, V, D, H, W]
    v = views.shape[1]
    x = jnp.swapaxes(views, 0, 1).reshape((v * b,) + views.shape[2:] + (1,))
    frozen = step < c.freeze_prototypes_steps
    protos = params['prototypes']['kernel']
    params = {**params, 'prototypes': {
        'kernel': jnp.where(frozen, lax.stop_gradient(protos), protos)}}
    (_, scores), new_vars = model.apply({'params': params, 'batch_stats': batch_stats}, x,
                                        train=True, mutable=['batch_stats'])
    scores = scores.reshape(v, b, -1)                                   # [V, b, K]
    glob = lax.all_gather(scores, lib.AXIS, axis=1, tiled=True)          # [V, B, K]
    codes, err = jax.vmap(lambda s: swav.sinkhorn_codes(s, c.epsilon, c.sinkhorn_iterations,
                                                        c.sinkhorn_threshold))(glob)
    mine = lax.dynamic_slice_in_dim(codes, lax.axis_index(lib.AXIS) * b, b, axis=1)
    loss = swav.swapped_prediction_loss(scores, mine, c.temperature)
    metrics = dict(sinkhorn_marginal_error=jnp.max(err),
                   prototype_entropy=swav.prototype_entropy(glob.reshape(-1, glob.shape[-1]),
                                                             c.temperature))
    return loss, (new_vars['batch_stats'], metrics)

  return loss_fn


def post_update(params):
  return heads.normalize_prototypes(params)


# ------------------------------------------------------------------------------------ task
def run(config, workdir: str):
  """Pre-train on the unlabeled vertebrae's texture pools; checkpoints + TensorBoard in workdir."""
  pools = pool_data.ensure_pool(config, ('pretrain',))
  n = len(pools)
  if config.batch_size > n:
    raise ValueError(f'batch_size {config.batch_size} exceeds the {n} pre-training vertebrae')
  steps_per_epoch = max(n // config.batch_size, 1)
  total = config.epochs * steps_per_epoch
  optim = optimizer_config(config, steps_per_epoch)
  model = build_model(config)
  state = init_state(config, model, pools.shape[2:], optim, total)
  print(f'[{config.task}] {n} vertebrae, {steps_per_epoch} steps/epoch x {config.epochs} epochs '
        f'= {total} steps, batch {config.batch_size} on {jax.device_count()} device(s)',
        flush=True)

  def make_batch(step):
    idx = lib.batch_indices(n, config.batch_size, config.seed, step)
    return {'pool': pools.read(lib.host_indices(idx))}

  return lib.fit(workdir=workdir, state=state, loss_fn=make_loss_fn(config, model),
                 make_batch=make_batch, total_steps=total, seed=config.seed,
                 batch_size=config.batch_size, log_every=config.log_every,
                 ckpt_every=config.ckpt_every, post_update=post_update,
                 lr_fn=lib.make_schedule(optim, total), name=config.task)
