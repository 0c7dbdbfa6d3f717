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

from osteojax import models
from osteojax.data import augment
from osteojax.diagnosis import pool_data
from osteojax.errors import ConfigError
from osteojax.models import heads
from osteojax.objectives import swav
from osteojax.texture import pool
from osteojax.train import lib


# ------------------------------------------------------------------------------------ views
def _intensity(v, key, c):
  return augment.perturb_intensity(v, key, c.intensity, pool.HU_WINDOW)


def pool_views(pool_, key, c):
  """TP-SwAV: c.num_views distinct pool members of one vertebra. pool: [P, D, H, W] -> [V, ...].

  Each view is flipped at random; the original member (index 0) also gets the intensity
  augmentation (augment.INTENSITY_MODES, in HU): the texture maps are not in HU.
  """
  kp, ka = jax.random.split(key)
  members = jax.random.permutation(kp, pool_.shape[0])[:c.num_views]
  views = pool_[members]

  def one(v, m, k):
    kf, ki = jax.random.split(k)
    v = augment.flip(v, kf, c.flip_prob)
    return jnp.where(m == 0, _intensity(v, ki, c), v)

  return jax.vmap(one)(views, members, jax.random.split(ka, c.num_views))


def _crop(vol, key, frac_range, out_shape, c):
  """A random cube-fraction crop of vol, zoomed to out_shape, flipped and intensity-augmented."""
  ks, kt, kf, ki = jax.random.split(key, 4)
  frac = jax.random.uniform(ks, (), minval=frac_range[0], maxval=frac_range[1])
  n = jnp.array(vol.shape, jnp.float32)
  scale = jnp.array(out_shape, jnp.float32) / (frac * n)
  # translation so that the crop [o, o + frac * n) fills the output: out = in * s + t
  offset = jax.random.uniform(kt, (3,)) * (1 - frac) * n
  out = jax.image.scale_and_translate(vol, out_shape, (0, 1, 2), scale, -offset * scale,
                                      'linear')
  return _intensity(augment.flip(out, kf, c.flip_prob), ki, c)


def small_crop_shape(shape, c):
  return tuple(max(int(round(s * c.small_crop_size)), 4) for s in shape)


def crop_views(pool_, key, c):
  """SwAV: c.num_views global crops (edge fraction U(c.crop_min, 1)) of the original (pool[0])
  at full size, and c.small_crops small crops (edge fraction in c.small_crop_range) zoomed to
  c.small_crop_size of the edge (SwAV's multi-crop). -> ([V, D, H, W], [S, d, h, w] or None)."""
  vol = pool_[0]
  kg, ks = jax.random.split(key)
  glob = jax.vmap(lambda k: _crop(vol, k, (c.crop_min, 1.0), vol.shape, c))(
      jax.random.split(kg, c.num_views))
  if not c.small_crops:
    return glob, None
  small = small_crop_shape(vol.shape, c)
  return glob, jax.vmap(lambda k: _crop(vol, k, tuple(c.small_crop_range), small, c))(
      jax.random.split(ks, c.small_crops))


# ------------------------------------------------------------------------------------ model
def build_model(config):
  enc = models.encoder_from_config(config.model)
  return heads.SwAVModel(enc, config.swav.hidden_dim, config.swav.proj_dim,
                         config.swav.num_prototypes)


def optimizer_config(config, steps_per_epoch):
  """config.optim with warm-up given in steps (the config states it in epochs, as the paper)."""
  c = config.optim.copy_and_resolve_references()
  with c.unlocked():
    c.warmup_steps = int(c.warmup_epochs * steps_per_epoch)
  return c


def init_state(config, model, input_shape, optim, total_steps):
  """Initial TrainState: params from config.seed, unit prototypes, AdamW on the schedule.

  With a queue (config.swav.queue_length > 0), batch_stats['queue'] holds the last
  queue_length global-batch embeddings of each coded view, [V, Q, proj_dim], zeros at first.
  """
  x = jnp.zeros((2,) + tuple(input_shape) + (1,), jnp.float32)
  # One compiled init (eager, each initializer op compiles on its own: 3-4x slower on CPU).
  def init(k, v):
    variables = model.init(k, v, train=False)
    return heads.normalize_prototypes(variables['params']), variables['batch_stats']

  params, stats = jax.jit(init)(jax.random.PRNGKey(config.seed), x)
  stats = dict(stats)
  if config.swav.queue_length:
    stats['queue'] = jnp.zeros((config.swav.num_views, config.swav.queue_length,
                                config.swav.proj_dim), jnp.float32)
  return lib.create_state(apply_fn=model.apply, params=params,
                          tx=lib.make_optimizer(optim, total_steps), batch_stats=stats)


def schedule_steps(config, steps_per_epoch: int) -> dict:
  """The SwAV step counts of the config's epoch figures: prototype freeze and queue start.

  The queue is used from the first step at which it is full, and not before
  c.queue_start_epochs.
  """
  c = config.swav
  fill = -(-c.queue_length // config.batch_size) if c.queue_length else 0
  return dict(freeze=int(round(c.freeze_prototypes_epochs * steps_per_epoch)),
              queue=max(fill, int(round(c.queue_start_epochs * steps_per_epoch))))


def make_loss_fn(config, model, steps_per_epoch: int = 1):
  """loss_fn(params, batch_stats, batch, rng, step) for the shared step builder.

  batch['pool']: [b, P, D, H, W] float32 (local shard). Views by config.views: 'pool'|'crops'.
  Codes come from the coded (global) views over the global batch, with the queue's earlier
  embeddings once it is in use; small crops (SwAV multi-crop) only predict.
  """
  c = config.swav
  view_fn = {'pool': pool_views, 'crops': crop_views}[config.views]
  sched = schedule_steps(config, steps_per_epoch)

  def forward(params, stats, views):
    v = views.shape[1]
    x = jnp.swapaxes(views, 0, 1).reshape((-1,) + views.shape[2:] + (1,))
    (z, scores), new_vars = model.apply({'params': params, 'batch_stats': stats}, x,
                                        train=True, mutable=['batch_stats'])
    return z.reshape(v, -1, z.shape[-1]), scores.reshape(v, -1, scores.shape[-1]), \
        new_vars['batch_stats']

  def loss_fn(params, batch_stats, batch, rng, step):
    pool_ = batch['pool']
    b = pool_.shape[0]
    keys = lib.example_keys(rng, b)
    if config.views == 'pool':
      views, small = jax.vmap(lambda p, k: view_fn(p, k, c))(pool_, keys), None
    else:
      views, small = jax.vmap(lambda p, k: view_fn(p, k, c))(pool_, keys)
    frozen = step < sched['freeze']
    protos = params['prototypes']['kernel']
    params = {**params, 'prototypes': {
        'kernel': jnp.where(frozen, lax.stop_gradient(protos), protos)}}
    z, scores, stats = forward(params, batch_stats, views)              # [V, b, .]
    all_scores = scores
    if small is not None:
      _, s_small, stats = forward(params, stats, small)
      all_scores = jnp.concatenate([scores, s_small])
    glob = lax.all_gather(scores, lib.AXIS, axis=1, tiled=True)          # [V, B, K]
    solve = lambda s: swav.sinkhorn_codes(s, c.epsilon, c.sinkhorn_iterations,
                                          c.sinkhorn_threshold)
    codes, err = jax.vmap(solve)(glob)
    if c.queue_length:
      queue = batch_stats['queue']                                       # [V, Q, F]
      q_scores = jnp.einsum('vqf,fk->vqk', queue, lax.stop_gradient(protos))
      q_codes, q_err = jax.vmap(lambda s, qs: swav.queue_codes(
          s, qs, c.epsilon, c.sinkhorn_iterations, c.sinkhorn_threshold))(glob, q_scores)
      use = step >= sched['queue']
      codes, err = jnp.where(use, q_codes, codes), jnp.where(use, q_err, err)
      z_glob = lax.all_gather(lax.stop_gradient(z), lib.AXIS, axis=1, tiled=True)
      n = z_glob.shape[1]
      stats = {**stats, 'queue': jnp.concatenate([z_glob, queue[:, :queue.shape[1] - n]],
                                                 axis=1)}
    mine = lax.dynamic_slice_in_dim(codes, lax.axis_index(lib.AXIS) * b, b, axis=1)
    loss = swav.swapped_prediction_loss(all_scores, mine, c.temperature)
    metrics = dict(sinkhorn_marginal_error=jnp.max(err),
                   prototype_entropy=swav.prototype_entropy(glob.reshape(-1, glob.shape[-1]),
                                                             c.temperature))
    return loss, (stats, metrics)

  return loss_fn


def post_update(params):
  return heads.normalize_prototypes(params)


# ------------------------------------------------------------------------------------ task
def unlabeled_pools(config):
  """(pools, steps per epoch, total steps, optimiser config) of a pre-training run: the texture
  pools of the unlabeled vertebrae (built or read from the cache) and the run's schedule."""
  pools = lib.primary_first(lambda: pool_data.ensure_pool(config, ('pretrain',)), 'pool')
  n = len(pools)
  if config.batch_size > n:
    raise ConfigError(f'batch_size {config.batch_size} exceeds the {n} pre-training vertebrae')
  steps_per_epoch = max(n // config.batch_size, 1)
  total = config.epochs * steps_per_epoch
  return pools, steps_per_epoch, total, optimizer_config(config, steps_per_epoch)


def check_config(config) -> None:
  """The choices by name, checked before any pool is built or file written (tasks.run calls it
  before it saves the config)."""
  if config.views not in ('pool', 'crops'):
    raise ConfigError(f"unknown config.views {config.views!r}; known: pool, crops")
  augment.intensity_bounds(config.swav.intensity)


def run(config, workdir: str):
  """Pre-train on the unlabeled vertebrae's texture pools; checkpoints + TensorBoard in workdir."""
  check_config(config)
  pools, steps_per_epoch, total, optim = unlabeled_pools(config)
  n = len(pools)
  model = build_model(config)
  state = init_state(config, model, pools.shape[2:], optim, total)
  print(f'[{config.task}] {n} vertebrae, {steps_per_epoch} steps/epoch x {config.epochs} epochs '
        f'= {total} steps, batch {config.batch_size} on {jax.device_count()} device(s)',
        flush=True)

  return fit_unlabeled(config, workdir, state, make_loss_fn(config, model, steps_per_epoch), n,
                       optim, total, lambda idx, step: {'pool': pools.read(lib.host_indices(idx))},
                       post_update=post_update, name=config.task)


def fit_unlabeled(config, workdir, state, loss_fn, n, optim, total, batch, post_update=None,
                  name=None):
  """lib.fit with a pre-training config's seed, batch size, logging, checkpoints and schedule:
  step s trains on batch(idx, s), idx the global batch's indices into the n unlabeled vertebrae
  (the loop every pre-training task shares)."""
  def make_batch(step):
    return batch(lib.batch_indices(n, config.batch_size, config.seed, step), step)

  return lib.fit(workdir=workdir, state=state, loss_fn=loss_fn, make_batch=make_batch,
                 total_steps=total, seed=config.seed, batch_size=config.batch_size,
                 log_every=config.log_every, ckpt_every=config.ckpt_every,
                 max_to_keep=config.get('keep_checkpoints', 3), post_update=post_update,
                 lr_fn=lib.make_schedule(optim, total), name=name or config.task)


def volume_batch(pools):
  """batch(idx, step) for fit_unlabeled of the methods that make their views inside the loss
  (MAE, VoCo, SwinMM): the original volumes, this host's share."""
  return lambda idx, step: {'volume': pools.read(lib.host_indices(idx))[:, 0]}
