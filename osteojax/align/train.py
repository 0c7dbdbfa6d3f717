"""Task 'align': contrastive training of the DXA and MRI encoders on BodySim pairs.

Per global batch of N pairs: augment both scans (random translation, brightness, contrast),
encode, gather the maps of the whole batch across devices (`lax.all_gather`), similarity of every
DXA / MRI pair = max over translations of the map correlation (FFT, osteojax.align.correlation),
symmetric InfoNCE with temperature tau. Every device computes the same N x N loss on the gathered
maps; the gather's transpose sums the devices' gradients of their own examples' maps, and the
step's `pmean` then averages D identical-scale copies, so the update equals the 1-device one.
After training the test split is evaluated (osteojax.align.evaluate) into <workdir>/eval_test.*.
"""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax import lax

from osteojax.align import correlation
from osteojax.data import bodysim
from osteojax.data.io import OsteoDataError
from osteojax.models import spatial
from osteojax.objectives import contrastive
from osteojax.train import lib


# ------------------------------------------------------------------------------------ data
def data_dir(config) -> str:
  """config.data.dir, or a name made of the BodySim settings under data/."""
  if config.data.dir:
    return config.data.dir
  return os.path.join('data', f'bodysim_s{config.data.scale}_seed{config.data.seed}')


def ensure_data(config, progress: bool = True) -> str:
  """The BodySim folder of this config.

  An explicit config.data.dir that already holds a BodySim data set is used as it is (e.g. one
  made by tools/make_bodysim.py with other sizes); otherwise the folder is generated, or
  regenerated when it was made with other settings.
  """
  out = data_dir(config)
  marker = os.path.join(out, bodysim.MARKER)
  if config.data.dir and os.path.exists(marker):
    return out
  sizes = dict(config.data.sizes)
  if not bodysim.is_current(out, config.data.scale, config.data.seed, sizes):
    print(f'[align] generating BodySim in {out}', flush=True)
    bodysim.generate(out, config.data.scale, config.data.seed, sizes, config.data.workers,
                     progress=progress)
  return out


def channel_indices(names, known, modality):
  """Config channel names -> indices into the stored channels; clear error on unknown names."""
  names = tuple(names)
  if not names:
    raise ValueError(f'no {modality} channels selected (choose from {", ".join(known)})')
  bad = [n for n in names if n not in known]
  if bad:
    raise ValueError(f'unknown {modality} channel(s) {bad}; known: {", ".join(known)}')
  return [known.index(n) for n in names]


def select_channels(data: dict, config) -> tuple[np.ndarray, np.ndarray]:
  """(dxa [N, H, W, Cd], mri [N, h, w, Cm]) with the config's channels, float32."""
  di = channel_indices(config.model.dxa_channels, bodysim.DXA_CHANNELS, 'DXA')
  mi = channel_indices(config.model.mri_channels, bodysim.MRI_CHANNELS, 'MRI')
  return (np.ascontiguousarray(data['dxa'][..., di]),
          np.ascontiguousarray(data['mri'][..., mi]))


def check_inputs(dxa, mri, dxa_channels: int, mri_channels: int):
  """Bad input -> ValueError with one clear line: shapes, channel counts, NaNs, empty."""
  for name, x, c in (('DXA', dxa, dxa_channels), ('MRI', mri, mri_channels)):
    if x.ndim != 4:
      raise ValueError(f'{name} scans must be [N, H, W, C], got shape {x.shape}')
    if x.shape[0] == 0:
      raise ValueError(f'empty batch: no {name} scans')
    if x.shape[-1] != c:
      raise ValueError(f'{name} scans have {x.shape[-1]} channels; the encoder expects {c}')
    n_bad = int(np.size(x) - np.isfinite(x).sum())
    if n_bad:
      raise ValueError(f'{name} scans contain {n_bad} NaN or infinite values')
  if dxa.shape[0] != mri.shape[0]:
    raise ValueError(f'{dxa.shape[0]} DXA scans but {mri.shape[0]} MRI scans')
  if mri.shape[1] > dxa.shape[1] or mri.shape[2] > dxa.shape[2]:
    raise ValueError(f'the MRI field {mri.shape[1:3]} must fit inside the DXA field '
                     f'{dxa.shape[1:3]} (same pixel spacing)')


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


# ------------------------------------------------------------------------------------ model
def build_model(config) -> spatial.Aligner:
  m = config.model
  return spatial.Aligner(m.encoder, tuple(m.widths), m.last_width, m.embed_dim)


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


# ------------------------------------------------------------------------------------ inference
def embed(model, variables, dxa, mri, batch_size: int = 32):
  """Unit-norm maps of all scans (eval mode): numpy [N, H', W', D], [N, h', w', D]."""
  fd = jax.jit(lambda x: model.apply(variables, x, method=model.embed_dxa))
  fm = jax.jit(lambda x: model.apply(variables, x, method=model.embed_mri))
  out_d = [np.asarray(fd(dxa[i:i + batch_size])) for i in range(0, len(dxa), batch_size)]
  out_m = [np.asarray(fm(mri[i:i + batch_size])) for i in range(0, len(mri), batch_size)]
  return np.concatenate(out_d), np.concatenate(out_m)


def similarity_all(dxa_maps, mri_maps, chunk: int = 64) -> np.ndarray:
  """[N, M] similarities of all DXA / MRI maps by FFT, in chunks of rows and columns."""
  f = jax.jit(correlation.similarity_matrix)
  rows = []
  for i in range(0, len(dxa_maps), chunk):
    rows.append(np.concatenate([np.asarray(f(dxa_maps[i:i + chunk], mri_maps[j:j + chunk]))
                                for j in range(0, len(mri_maps), chunk)], axis=1))
  return np.concatenate(rows, axis=0)


def load_encoders(workdir: str, step: int | None = None):
  """(model, variables {'params', 'batch_stats'}, config, step) of a trained aligner in workdir.

  Reads <workdir>/config.json and the newest (or the given) checkpoint; OsteoDataError when
  either is missing. Use with `embed(model, variables, dxa, mri)` or
  model.apply(variables, x, method=model.embed_dxa / embed_mri).
  """
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise OsteoDataError(workdir, 'no config.json: not an aligner run folder')
  with open(path, encoding='utf-8') as f:
    config = ml_collections.ConfigDict(json.load(f))
  if config.get('task') != 'align':
    raise OsteoDataError(path, f'task is {config.get("task")!r}, not align')
  ck = lib.Checkpoints(workdir)
  steps = ck.mngr.all_steps()
  if not steps:
    ck.close()
    raise OsteoDataError(workdir, 'no checkpoint in checkpoints/')
  model = build_model(config)
  g = bodysim.geometry(config.data.scale)
  dshape = tuple(g['dxa_shape']) + (len(config.model.dxa_channels),)
  mshape = tuple(g['mri_shape']) + (len(config.model.mri_channels),)
  state = init_state(config, model, dshape, mshape, 1)
  if step is None:
    state, got = ck.restore(state)
  else:
    import orbax.checkpoint as ocp
    state, got = ck.mngr.restore(step, args=ocp.args.StandardRestore(state)), step
  ck.close()
  if not got:
    raise OsteoDataError(workdir, 'no readable checkpoint')
  return model, {'params': state.params, 'batch_stats': state.batch_stats}, config, got


# ------------------------------------------------------------------------------------ task
def run(config, workdir: str):
  """Train on the BodySim train split, then evaluate the test split into workdir."""
  from osteojax.align import evaluate   # evaluation imports matplotlib; only needed here
  ddir = ensure_data(config)
  train = bodysim.load_pairs(ddir, 'train', config.data.get('train_limit') or None)
  dxa, mri = select_channels(train, config)
  check_inputs(dxa, mri, len(config.model.dxa_channels), len(config.model.mri_channels))
  n = len(dxa)
  if config.batch_size > n:
    raise ValueError(f'batch_size {config.batch_size} exceeds the {n} training pairs')
  if config.batch_size % jax.device_count():
    raise ValueError(f'batch_size {config.batch_size} does not split over '
                     f'{jax.device_count()} devices')
  total = config.steps
  model = build_model(config)
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
    evaluate.evaluate_run(workdir, config.eval_split, data_dir=ddir)
  return state
