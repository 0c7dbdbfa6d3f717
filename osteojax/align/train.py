"""Task 'align': contrastive training of the DXA and MRI encoders on BodySim pairs.

Per global batch of N pairs: augment both scans (random translation, brightness, contrast),
encode, gather the maps of the whole batch across devices (`lax.all_gather`), similarity of every
DXA / MRI pair = max over translations of the map correlation (FFT, osteojax.align.correlation),
symmetric InfoNCE with temperature tau. Every device computes the same N x N loss on the gathered
maps; the gather's transpose sums the devices' gradients of their own examples' maps, and the
step's `pmean` then averages D identical-scale copies, so the update equals the 1-device one.
After training the test split is evaluated (osteojax.align.retrieval) into <workdir>/eval_test.*.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jax import lax

from osteojax.align import correlation, encoders, pairs
from osteojax.data import bodysim
from osteojax.objectives import contrastive
from osteojax.train import lib


# ------------------------------------------------------------------------------------ augment
def augment(x, key, shift: int, intensity: float):
  """Random integer translation (zero fill) by up to +-shift px and brightness / contrast
  scaling by up to +-intensity. x: [H, W, C]."""
  ks, kc, kb = jax.random.split(key, 3)
  if shift:
    d = jax.random.randint(ks, (2,), -shift, shift + 1)
    pad = jnp.pad(x, ((shift, shift), (shift, shift), (0, 0)))
    x = lax.dynamic_slice(pad, (shift - d[0], shift - d[1], 0), x.shape)
  c = 1 + intensity * jax.random.uniform(kc, (), minval=-1, maxval=1)
  b = 1 + intensity * jax.random.uniform(kb, (), minval=-1, maxval=1)
  m = jnp.mean(x, axis=(0, 1), keepdims=True)
  return jnp.maximum((m + (x - m) * c) * b, 0.0)


# ------------------------------------------------------------------------------------ state and loss
def make_tx(c, total_steps: int):
  """Adam (the paper: lr 1e-5, betas 0.9 / 0.999, constant); c.decay 'cosine' adds warm-up and
  cosine decay (lib.make_schedule)."""
  lr = c.lr if c.decay == 'constant' else lib.make_schedule(c, total_steps)
  return optax.adam(lr, b1=c.b1, b2=c.b2)


def init_state(config, model, dxa_shape, mri_shape, total_steps: int) -> lib.TrainState:
  """dxa_shape / mri_shape: one scan's [H, W, C]."""
  v = model.init(jax.random.PRNGKey(config.seed), jnp.zeros((2,) + tuple(dxa_shape)),
                 jnp.zeros((2,) + tuple(mri_shape)), train=False)
  return lib.TrainState.create(apply_fn=model.apply, params=v['params'],
                               tx=make_tx(config.optim, total_steps),
                               batch_stats=v['batch_stats'])


def make_loss_fn(config, model):
  """loss_fn(params, batch_stats, batch, rng, step) for lib.make_train_step.

  batch: dict(dxa [b, H, W, Cd], mri [b, h, w, Cm]) float32, this device's share.
  """
  a = config.augment

  def loss_fn(params, batch_stats, batch, rng, step):
    b = batch['dxa'].shape[0]
    keys = lib.example_keys(rng, b)
    kd = jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys)
    km = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
    dxa = jax.vmap(lambda x, k: augment(x, k, a.shift_px, a.intensity))(batch['dxa'], kd)
    mri = jax.vmap(lambda x, k: augment(x, k, a.shift_px, a.intensity))(batch['mri'], km)
    (fd, fm), new = model.apply({'params': params, 'batch_stats': batch_stats}, dxa, mri,
                                train=True, mutable=['batch_stats'])
    fd = lax.all_gather(fd, lib.AXIS, tiled=True)                   # [B, H', W', D]
    fm = lax.all_gather(fm, lib.AXIS, tiled=True)
    sim = correlation.similarity_matrix(fd, fm)                     # [B, B]
    loss = contrastive.symmetric_infonce(sim, config.loss.temperature)
    eye = jnp.eye(sim.shape[0], dtype=bool)
    metrics = dict(top1=contrastive.retrieval_accuracy(sim),
                   sim_match=jnp.sum(jnp.where(eye, sim, 0)) / sim.shape[0],
                   sim_other=jnp.sum(jnp.where(eye, 0, sim)) / max(sim.size - sim.shape[0], 1))
    return loss, (new['batch_stats'], metrics)

  return loss_fn


# ------------------------------------------------------------------------------------ task
def run(config, workdir: str):
  """Train on the BodySim train split, then evaluate the test split into workdir."""
  from osteojax.align import retrieval   # imports matplotlib; only needed here
  ddir = pairs.ensure_data(config)
  train = bodysim.load_pairs(ddir, 'train', config.data.get('train_limit') or None)
  dxa, mri = pairs.select_channels(train, config)
  pairs.check_inputs(dxa, mri, len(config.model.dxa_channels), len(config.model.mri_channels))
  n = len(dxa)
  if config.batch_size > n:
    raise ValueError(f'batch_size {config.batch_size} exceeds the {n} training pairs')
  if config.batch_size % jax.device_count():
    raise ValueError(f'batch_size {config.batch_size} does not split over '
                     f'{jax.device_count()} devices')
  total = config.steps
  model = encoders.build_model(config)
  state = init_state(config, model, dxa.shape[1:], mri.shape[1:], total)
  print(f'[align] {n} training pairs, DXA {dxa.shape[1:]} MRI {mri.shape[1:]}, encoder '
        f'{config.model.encoder}, tau {config.loss.temperature}, {total} steps of batch '
        f'{config.batch_size} on {jax.device_count()} device(s)', flush=True)

  def make_batch(step):
    idx = lib.host_indices(lib.batch_indices(n, config.batch_size, config.seed, step))
    return {'dxa': dxa[idx], 'mri': mri[idx]}

  lr_fn = None if config.optim.decay == 'constant' else lib.make_schedule(config.optim, total)
  state = lib.fit(workdir=workdir, state=state, loss_fn=make_loss_fn(config, model),
                  make_batch=make_batch, total_steps=total, seed=config.seed,
                  batch_size=config.batch_size, log_every=config.log_every,
                  ckpt_every=config.ckpt_every, lr_fn=lr_fn, name='align')
  if config.eval_split:
    retrieval.evaluate_run(workdir, config.eval_split, data_dir=ddir)
  return state
