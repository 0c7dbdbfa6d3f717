"""Task 'align': contrastive training of the DXA and MRI encoders on BodySim pairs.

Each scan is normalised per channel to [0, 1] (pairs.normalise). Per global batch of N pairs:
augment both scans as the authors do (rotation, small translation, brightness, gamma), encode, gather the maps of the whole batch across devices (`lax.all_gather`), similarity of every
DXA / MRI pair = max over translations of the map correlation (FFT, osteojax.align.correlation),
symmetric InfoNCE with temperature tau. Every device computes the same N x N loss on the gathered
maps; the gather's transpose sums the devices' gradients of their own examples' maps, and the
step's `pmean` then averages D identical-scale copies, so the update equals the 1-device one.
Every config.eval_every steps the validation pairs are retrieved and the checkpoint with the
best validation mean rank is kept in <workdir>/best (the authors' choice); the test split is then
evaluated with it (osteojax.align.retrieval) into <workdir>/eval_test.*.

With config.starts = k > 1 the run first trains k starts for config.start_steps steps each
(start i with seed config.seed + 1000 i, in <workdir>/starts/seed<s>), keeps the one with the
lowest validation mean rank and goes on from it: the run is then the same as a plain run with
that seed. Some seeds settle early on a wrong correspondence (every MRI placed the same distance
off), which longer training does not undo (docs/align.md); the choice is made on validation.
"""
from __future__ import annotations

import json
import os
import shutil

import jax
import jax.numpy as jnp
import optax
from jax import lax

from osteojax.align import correlation, encoders, pairs
from osteojax.data import io as dio
from osteojax.errors import ConfigError
from osteojax.evaluate import metrics
from osteojax.objectives import contrastive
from osteojax.train import lib


# ------------------------------------------------------------------------------------ augment
def warp(x, theta, shift):
  """x [H, W, C] rotated by theta (radians; clockwise on screen, rows pointing down) about the
  image centre, then translated by shift = (rows, cols) pixels; bilinear, zero outside."""
  h, w = x.shape[:2]
  cy, cx = (h - 1) / 2, (w - 1) / 2
  yy, xx = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                        indexing='ij')
  py, px = yy - cy - shift[0], xx - cx - shift[1]       # output pixel -> source pixel
  c, s = jnp.cos(theta), jnp.sin(theta)
  qy, qx = c * py - s * px + cy, s * py + c * px + cx
  return jnp.stack([jax.scipy.ndimage.map_coordinates(x[..., k], [qy, qx], order=1,
                                                      mode='constant', cval=0.0)
                    for k in range(x.shape[-1])], axis=-1)


def augment(x, key, shift_px: int = 0, rotate_deg: float = 0.0, brightness: float = 0.0,
            gamma=(1.0,)):
  """The authors' augmentation of one scan x [H, W, C] (values in [0, 1], data.normalise
  'minmax'): rotation by U(-rotate_deg, rotate_deg) about the centre and an integer translation
  of up to +-shift_px each way (bilinear, zero fill), then brightness x U(1 - b, 1 + b) clipped
  to [0, 1] and a gamma drawn uniformly from `gamma` (theirs: 1, 1, 0.5, 1.5)."""
  kr, ks, kb, kg = jax.random.split(key, 4)
  if shift_px or rotate_deg:
    theta = jnp.deg2rad(rotate_deg) * jax.random.uniform(kr, (), minval=-1, maxval=1)
    d = jax.random.randint(ks, (2,), -shift_px, shift_px + 1).astype(jnp.float32)
    x = warp(x, theta, d)
  b = 1 + brightness * jax.random.uniform(kb, (), minval=-1, maxval=1)
  g = jnp.asarray(gamma, jnp.float32)[jax.random.randint(kg, (), 0, len(gamma))]
  return jnp.clip(x * b, 0.0, 1.0) ** g


def augment_fn(a):
  """augment with the settings of config.augment."""
  return lambda x, k: augment(x, k, a.shift_px, a.rotate_deg, a.brightness, tuple(a.gamma))


# ------------------------------------------------------------------------------------ state and loss
def make_tx(c, total_steps: int):
  """Adam (the paper: lr 1e-5, betas 0.9 / 0.999, constant); c.decay 'cosine' adds warm-up and
  cosine decay (lib.make_schedule)."""
  lr = c.lr if c.decay == 'constant' else lib.make_schedule(c, total_steps)
  return optax.adam(lr, b1=c.b1, b2=c.b2)


def init_state(config, model, dxa_shape, mri_shape, total_steps: int,
               seed: int | None = None) -> lib.TrainState:
  """dxa_shape / mri_shape: one scan's [H, W, C]; seed: config.seed unless given."""
  v = jax.jit(lambda k, a, b: model.init(k, a, b, train=False))(      # one compilation
      jax.random.PRNGKey(config.seed if seed is None else seed),
      jnp.zeros((2,) + tuple(dxa_shape)),
      jnp.zeros((2,) + tuple(mri_shape)))
  return lib.create_state(apply_fn=model.apply, params=v['params'],
                          tx=make_tx(config.optim, total_steps),
                          batch_stats=v['batch_stats'])


def make_loss_fn(config, model):
  """loss_fn(params, batch_stats, batch, rng, step) for lib.make_train_step.

  batch: dict(dxa [b, H, W, Cd], mri [b, h, w, Cm]) float32, this device's share.
  """
  aug = augment_fn(config.augment)

  def loss_fn(params, batch_stats, batch, rng, step):
    b = batch['dxa'].shape[0]
    keys = lib.example_keys(rng, b)
    kd = jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys)
    km = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
    dxa = jax.vmap(aug)(batch['dxa'], kd)
    mri = jax.vmap(aug)(batch['mri'], km)
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
def validation_fn(config, model):
  """eval_fn(state) for lib.fit: retrieval on the validation pairs; score = -mean rank.
  None when the data set has no validation pairs."""
  if not pairs.has_split(config, 'val'):
    return None
  dxa, mri = pairs.select_channels(pairs.load(config, 'val'), config)

  def eval_fn(state):
    fd, fm = encoders.embed(model, {'params': state.params, 'batch_stats': state.batch_stats},
                            dxa, mri)
    m = metrics.retrieval_metrics(encoders.similarity_all(fd, fm))
    return {'score': -m['mean_rank'], 'mean_rank': m['mean_rank'], 'recall@1': m['recall@1']}
  return eval_fn


def check_config(config) -> None:
  """Before tasks.run saves the config: with config.data.manifest, every file it names is read
  and checked (manifest.check), so a bad file stops the run with one line and leaves an
  earlier run's config.json in the workdir as it was."""
  if config.data.get('manifest'):
    from osteojax.align import manifest
    manifest.check(config.data.manifest, config.model.dxa_channels, config.model.mri_channels)


def run(config, workdir: str):
  """Train on the BodySim train split, then evaluate the test split into workdir."""
  from osteojax.align import retrieval   # imports matplotlib; only needed here
  lib.primary_first(lambda: pairs.ensure_data(config), 'bodysim')
  train = pairs.load(config, 'train', config.data.get('train_limit') or None)
  dxa, mri = pairs.select_channels(train, config)
  pairs.check_inputs(dxa, mri, len(config.model.dxa_channels), len(config.model.mri_channels))
  n = len(dxa)
  if config.batch_size > n:
    raise ConfigError(f'batch_size {config.batch_size} exceeds the {n} training pairs')
  if config.batch_size % jax.device_count():
    raise ConfigError(f'batch_size {config.batch_size} does not split over '
                      f'{jax.device_count()} devices')
  total = config.steps
  model = encoders.build_model(config)
  g = encoders.scale_summary(config)
  print(f'[align] {n} training pairs, DXA {dxa.shape[1:]} MRI {mri.shape[1:]} at '
        f'{g["spacing_mm"]:g} mm, encoder {config.model.encoder} ({g["pools"]} poolings: '
        f'cells {g["cell_mm"]:g} mm, receptive field {g["receptive_field_mm"]:.0f} mm; the '
        f'paper {encoders.PAPER_CELL_MM:g} / {encoders.PAPER_RF_MM:.0f} mm), tau '
        f'{config.loss.temperature}, {total} steps of batch {config.batch_size} on '
        f'{jax.device_count()} device(s)', flush=True)

  lr_fn = None if config.optim.decay == 'constant' else lib.make_schedule(config.optim, total)
  eval_fn = validation_fn(config, model) if config.get('eval_every') else None
  loss_fn = make_loss_fn(config, model)

  def train(seed, folder, steps, eval_every):
    """lib.fit of `steps` of the run's schedule (over `total`) with this seed in folder."""
    def make_batch(step):
      idx = lib.host_indices(lib.batch_indices(n, config.batch_size, seed, step))
      return {'dxa': dxa[idx], 'mri': mri[idx]}
    return lib.fit(workdir=folder, state=init_state(config, model, dxa.shape[1:], mri.shape[1:],
                                                    total, seed),
                   loss_fn=loss_fn, make_batch=make_batch, total_steps=steps, seed=seed,
                   batch_size=config.batch_size, log_every=config.log_every,
                   ckpt_every=config.ckpt_every, lr_fn=lr_fn, name='align',
                   eval_fn=eval_fn, eval_every=eval_every)

  seed = choose_start(config, workdir, train, eval_fn is not None)
  state = train(seed, workdir, total, config.get('eval_every') or 0)
  if config.eval_split:              # single-process inference, one writer
    lib.primary_only(lambda: retrieval.evaluate_run(workdir, config.eval_split), 'evaluate')
  return state


START_SEED_STRIDE = 1000        # start i of a run of seed s trains with seed s + 1000 i


def choose_start(config, workdir: str, train, has_validation: bool) -> int:
  """The seed the run goes on with: config.seed, or with config.starts = k > 1 the seed of the
  start with the lowest validation mean rank after config.start_steps steps.

  train(seed, folder, steps, eval_every) trains one start (lib.fit: each start resumes from its
  own checkpoints). The chosen start's checkpoints, best checkpoint and validation history are
  copied into workdir, where the run resumes from them; <workdir>/starts.json records every
  start and the choice, and a resumed run reads it instead of choosing again.
  """
  k = int(config.get('starts', 1) or 1)
  if k <= 1:
    return config.seed
  record = os.path.join(workdir, encoders.STARTS_FILE)
  if os.path.exists(record):                 # chosen before this run was cut short
    return encoders.trained_seed(workdir, config)
  steps = int(config.get('start_steps', 0) or 0)
  if not has_validation:
    raise ConfigError('starts > 1 chooses on the validation split: it needs validation pairs '
                      'and eval_every > 0 (or --config.starts=1)')
  if not 0 < steps < config.steps:
    raise ConfigError(f'start_steps must be in 1..{config.steps - 1} (steps); got {steps} '
                      f'(or --config.starts=1)')
  root = os.path.join(workdir, 'starts')
  if os.path.isdir(os.path.join(workdir, 'checkpoints')) and not os.path.isdir(root):
    raise ConfigError(f'{workdir} holds a run trained without starts; use a new workdir (or '
                      f'--config.starts=1 to go on with it)')
  starts = []
  for i in range(k):
    seed = config.seed + START_SEED_STRIDE * i
    folder = os.path.join(root, f'seed{seed}')
    print(f'[align] start {i + 1}/{k}: seed {seed}, {steps} steps', flush=True)
    train(seed, folder, steps, steps)
    with open(os.path.join(folder, lib.ValidationHistory.FILE), encoding='utf-8') as f:
      last = json.load(f)['entries'][-1]
    starts.append(dict(seed=seed, step=last['step'], mean_rank=last['mean_rank'],
                       recall_at_1=last['recall@1']))
  chosen = min(starts, key=lambda r: r['mean_rank'])['seed']    # ties: the first start

  def place():         # a placement cut short is redone: starts.json is written last
    src = os.path.join(root, f'seed{chosen}')
    for name in ('checkpoints', 'best', lib.ValidationHistory.FILE):
      dst = os.path.join(workdir, name)
      if os.path.isdir(dst):
        shutil.rmtree(dst)
      if os.path.isdir(os.path.join(src, name)):
        shutil.copytree(os.path.join(src, name), dst)
      else:
        shutil.copy2(os.path.join(src, name), dst)
    dio.atomic_write_text(record, json.dumps(dict(start_steps=steps, starts=starts,
                                                  chosen_seed=chosen), indent=1))
  lib.primary_only(place, 'starts')
  print(f'[align] starts (validation mean rank after {steps} steps): ' + ', '.join(
      f'seed {r["seed"]} {r["mean_rank"]:.2f}' for r in starts) + f'; going on with seed {chosen}',
        flush=True)
  return chosen
