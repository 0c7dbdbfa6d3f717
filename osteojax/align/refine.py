"""Refinement regressor: training on self-made perturbations, and refining a registration.

Transforms here are parameter vectors (angle, tx, ty) about the source map's centre c, in map
cells: u -> R(angle) (u - c) + c + (tx, ty), source cells -> target cells. For an aligned pair
(transform A) a perturbation P is drawn (uniform in +-max_shift cells, +-max_angle radians);
the network sees the source beside the target resampled through A o P^-1 and learns P, so
that the correction of a transform T is T' = T o P_hat. Perturbations are keyed by the
example's global index (`lib.example_keys`), so 1 and N devices train identically.

`train` runs through lib.fit on arrays of aligned pairs; task 'refine' (`run`) trains on
generated pairs from osteojax.align.synthetic (truth = the generating transform) and reports
the error before and after refinement on held-out perturbed pairs.
"""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from osteojax.align import register, synthetic
from osteojax.align.rigid import Rigid2D
from osteojax.errors import ConfigError
from osteojax.models import refiner as refiner_lib
from osteojax.train import lib


# ------------------------------------------------------------------------ parameter algebra
def _rot(a):
  c, s = jnp.cos(a), jnp.sin(a)
  return jnp.array([[c, -s], [s, c]])


def compose(a, b):
  """a o b for (angle, tx, ty) vectors about one centre: [3], [3] -> [3]."""
  return jnp.concatenate([a[:1] + b[:1], _rot(a[0]) @ b[1:] + a[1:]])


def inverse(a):
  """a^-1 about the same centre: [3] -> [3]."""
  return jnp.concatenate([-a[:1], -(_rot(a[0]).T @ a[1:])])


def to_params(t: Rigid2D, center) -> np.ndarray:
  """Rigid2D -> (angle, tx, ty) about `center`."""
  return np.array(t.with_center(center).params(), np.float32)


def from_params(p, center) -> Rigid2D:
  p = np.asarray(p, np.float64)
  return Rigid2D(p[0], (p[1], p[2]), center)


def scales(c) -> jnp.ndarray:
  """Perturbation range (angle, dx, dy): the unit of the network's outputs."""
  return jnp.array([np.deg2rad(c.max_angle_deg), c.max_shift, c.max_shift], jnp.float32)


def sample_perturbation(key, c):
  """Uniform (angle, dx, dy) within +-(max_angle, max_shift, max_shift): [3]."""
  return jax.random.uniform(key, (3,), minval=-1.0, maxval=1.0) * scales(c)


def local_correlation(a, b, radius: int):
  """Cosine similarity of a(u) with b(u + d) for every offset d in [-r, r]^2 (zero outside).

  a, b: [h, w, C] unit (or zero) vectors -> [h, w, (2r + 1)^2], offsets in row-major order.
  """
  h, w = a.shape[:2]
  bp = jnp.pad(b, ((radius, radius), (radius, radius), (0, 0)))
  out = [jnp.sum(a * bp[radius + dy:radius + dy + h, radius + dx:radius + dx + w], -1)
         for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)]
  return jnp.stack(out, -1)


def make_input(src, tgt, params, corr_radius: int = 0, unit: bool = True):
  """[h, w, C], [H, W, C], [3] -> network input [h, w, 2C + 1 (+ (2r + 1)^2)].

  The source (zero where the warped target is undefined), the target resampled on the source
  grid through `params`, the validity mask, and with corr_radius r > 0 the local correlation
  volume of the two (`local_correlation`). unit: feature maps (unit vectors after
  resampling); False for images (the paper's refiner: warped DXA image beside the MRI image).
  """
  center = jnp.array(register.map_center(src.shape), jnp.float32)
  warped, valid = register.warp(tgt, params, center, src.shape[:2], unit)
  s = src * valid[..., None]
  parts = [s, warped, valid[..., None]]
  if corr_radius:
    parts.append(local_correlation(s, warped, corr_radius))
  return jnp.concatenate(parts, -1)


def input_channels(channels: int, corr_radius: int) -> int:
  return 2 * channels + 1 + (2 * corr_radius + 1) ** 2 * (corr_radius > 0)


# ------------------------------------------------------------------------ model and training
def build_model(config):
  return refiner_lib.refiner_from_config(config.model)


def init_state(config, model, src_shape, total_steps):
  """TrainState for inputs of source maps [h, w, C]."""
  h, w, ch = src_shape
  x = jnp.zeros((2, h, w, input_channels(ch, config.model.corr_radius)), jnp.float32)
  # jitted, with an 'rbg' key: compiling threefry for every parameter's initialiser took
  # ~12 s on a 2-core CPU, rbg ~2 s (only the initial values differ)
  variables = jax.jit(lambda k, v: model.init(k, v, train=False))(
      jax.random.key(config.seed, impl='rbg'), x)
  return lib.create_state(apply_fn=model.apply, params=variables['params'],
                          tx=lib.make_optimizer(config.optim, total_steps),
                          batch_stats=variables['batch_stats'])


def make_loss_fn(config, model):
  """loss_fn for lib.make_train_step. batch: src [b, h, w, C], tgt [b, H, W, C], aligned
  transforms params [b, 3]. Loss: mean squared error of the predicted perturbation in units of
  its range; metrics: the mean error in cells at the source centre and in degrees."""
  c = config.perturb
  r = config.model.corr_radius
  unit = config.model.get('unit_vectors', True)

  def loss_fn(params, batch_stats, batch, rng, step):
    b = batch['src'].shape[0]
    pert = jax.vmap(lambda k: sample_perturbation(k, c))(lib.example_keys(rng, b))
    start = jax.vmap(lambda a, p: compose(a, inverse(p)))(batch['params'], pert)
    x = jax.vmap(lambda a, b, p: make_input(a, b, p, r, unit))(batch['src'], batch['tgt'],
                                                               start)
    pred, new_vars = model.apply({'params': params, 'batch_stats': batch_stats}, x,
                                 train=True, mutable=['batch_stats'])
    sc = scales(c)
    loss = jnp.mean((pred - pert / sc) ** 2)
    err = (pred * sc - pert)
    metrics = dict(shift_error_cells=jnp.mean(jnp.linalg.norm(err[:, 1:], axis=-1)),
                   angle_error_deg=jnp.mean(jnp.abs(jnp.rad2deg(err[:, 0]))))
    return loss, (new_vars['batch_stats'], metrics)

  return loss_fn


def _check_training_data(src, tgt, params):
  src, tgt = np.asarray(src, np.float32), np.asarray(tgt, np.float32)
  params = np.asarray(params, np.float32)
  if src.ndim != 4 or tgt.ndim != 4 or src.shape[-1] != tgt.shape[-1]:
    raise ValueError(f'training maps must be [N, h, w, C] and [N, H, W, C], got {src.shape}, '
                     f'{tgt.shape}')
  if not len(src) == len(tgt) == len(params) or params.shape[1:] != (3,):
    raise ValueError(f'need one (angle, tx, ty) per pair: {len(src)} sources, {len(tgt)} '
                     f'targets, transforms {params.shape}')
  if not all(np.isfinite(a).all() for a in (src, tgt, params)):
    raise ValueError('training maps or transforms contain NaN or inf')
  return src, tgt, params


def salient_aligned(src_maps, tgt_maps, min_inliers: int = 10, **salient_kw):
  """Training transforms from the salient method: (params [M, 3], kept indices [M]).

  Runs register.salient on every pair; pairs where it fails or keeps fewer than min_inliers
  LMedS inliers are left out (the paper checked its 50 aligned pairs by eye).
  """
  params, kept = [], []
  for i, (s, g) in enumerate(zip(src_maps, tgt_maps)):
    try:
      res = register.salient(s, g, **salient_kw)
    except register.RegistrationError:
      continue
    if res.lmeds_inliers.sum() < min_inliers:
      continue
    params.append(to_params(res.transform, register.map_center(np.shape(s))))
    kept.append(i)
  return np.array(params, np.float32).reshape(-1, 3), np.array(kept, np.int64)


def train(config, workdir: str, src, tgt, params):
  """Train the regressor on aligned pairs through lib.fit. -> (model, variables).

  src: [N, h, w, C], tgt: [N, H, W, C] maps; params: [N, 3] aligned transforms (angle, tx, ty)
  about each source map's centre, source cells -> target cells.
  """
  src, tgt, params = _check_training_data(src, tgt, params)
  n = len(src)
  model = build_model(config)
  state = init_state(config, model, src.shape[1:], config.steps)

  def make_batch(step):
    idx = lib.host_indices(lib.batch_indices(n, config.batch_size, config.seed, step))
    return {'src': src[idx], 'tgt': tgt[idx], 'params': params[idx]}

  state = lib.fit(workdir=workdir, state=state, loss_fn=make_loss_fn(config, model),
                  make_batch=make_batch, total_steps=config.steps, seed=config.seed,
                  batch_size=config.batch_size, log_every=config.log_every,
                  ckpt_every=config.ckpt_every, lr_fn=lib.make_schedule(config.optim,
                                                                        config.steps),
                  name='refine')
  return model, {'params': state.params, 'batch_stats': state.batch_stats}


def make_refine_fn(model, variables, config):
  """Jitted (src [h, w, C], tgt [H, W, C], params [3]) -> corrected params [3]."""
  sc = scales(config.perturb)
  r = config.model.corr_radius
  unit = config.model.get('unit_vectors', True)

  @jax.jit
  def f(src, tgt, params):
    x = make_input(src, tgt, params, r, unit)[None]
    delta = model.apply(variables, x, train=False)[0] * sc
    return compose(params, delta)

  return f


def refine(refine_fn, src, tgt, transform: Rigid2D, iterations: int = 1) -> Rigid2D:
  """Correct a source -> target transform (map cells) with a trained regressor."""
  src, tgt = register.check_maps(src, tgt)
  center = register.map_center(src.shape)
  p = jnp.asarray(to_params(transform, center))
  for _ in range(iterations):
    p = refine_fn(src, tgt, p)
  return from_params(jax.device_get(p), center)


# ------------------------------------------------------------------------ task on generated pairs
def generated_pairs(c, n: int, seed: int):
  """n generated aligned pairs: src [n, h, w, C], tgt [n, H, W, C], params [n, 3] (truth)."""
  rng = np.random.default_rng(seed)
  srcs, tgts, ps = [], [], []
  for i in range(n):
    t = synthetic.random_transform(rng, c.src_hw, c.tgt_hw, np.deg2rad(c.max_angle_deg),
                                   c.margin)
    s, g = synthetic.make_pair(c.src_hw, c.tgt_hw, t, c.channels, c.length, c.noise,
                               seed=int(rng.integers(2**31)))
    srcs.append(s)
    tgts.append(g)
    ps.append(to_params(t, register.map_center(s.shape)))
  return np.stack(srcs), np.stack(tgts), np.stack(ps)


def evaluate(refine_fn, c_perturb, src, tgt, params, seed: int, iterations: int = 1) -> dict:
  """Mean grid error (cells) of perturbed aligned pairs before and after refinement."""
  rng = np.random.default_rng(seed)
  before, after = [], []
  sc = np.asarray(scales(c_perturb))
  for s, g, p in zip(src, tgt, params):
    center = register.map_center(s.shape)
    truth = from_params(p, center)
    pert = from_params(rng.uniform(-1, 1, 3) * sc, center)
    start = truth @ pert.inverse()
    est = refine(refine_fn, s, g, start, iterations)
    before.append(register.mean_grid_error(start, truth, s.shape[:2]))
    after.append(register.mean_grid_error(est, truth, s.shape[:2]))
  before, after = np.array(before), np.array(after)
  return dict(pairs=len(before), before_mean=float(before.mean()), before_sd=float(before.std()),
              after_mean=float(after.mean()), after_sd=float(after.std()),
              improved_fraction=float(np.mean(after < before)))


def run(config, workdir: str):
  """Task 'refine': train on generated aligned pairs, evaluate on held-out ones (JSON)."""
  if config.data.source != 'synthetic':
    raise ConfigError(f'unknown refine data source {config.data.source!r} (synthetic)')
  d = config.data
  src, tgt, params = generated_pairs(d, d.train_pairs, d.seed)
  model, variables = train(config, workdir, src, tgt, params)
  te = generated_pairs(d, d.test_pairs, d.seed + 1)
  fn = make_refine_fn(model, variables, config)
  res = evaluate(fn, config.perturb, *te, seed=d.seed + 2)
  res.update(data='generated feature-map pairs (osteojax.align.synthetic)', seed=config.seed,
             data_seed=d.seed)
  with open(os.path.join(workdir, 'refine_eval.json'), 'w', encoding='utf-8') as f:
    json.dump(res, f, indent=1)
  print(json.dumps(res), flush=True)
  return res
