"""Task 'unet': a 2-D U-Net segmenter trained through the shared machinery, scored by Dice.

Annotation transfer trains it on MRIs with masks moved from DXA (or on true MRI masks for the
upper bound, on identity-moved masks for the lower bound) and scores it against the true MRI
masks of held-out subjects. Labels: 0 background, 1 spine, 2 pelvis, 3 pelvic cavity.

Data interface (`SegData`): images [N, H, W, C] float32 and integer masks [N, H, W]; from
- config.data.source = 'npz': config.data.train_dir and .test_dir, folders of .npz files each
  holding 'image' ([H, W] or [H, W, C]) and 'mask' ([H, W] ints in 0 .. num_classes - 1);
- config.data.source = 'shapes': generated shapes (`shapes`) for smoke tests;
- or arrays passed to `train_and_evaluate` directly.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from osteojax.data.io import OsteoDataError
from osteojax.errors import ConfigError
from osteojax.evaluate import metrics
from osteojax.models import unet
from osteojax.train import lib

LABELS = {0: 'background', 1: 'spine', 2: 'pelvis', 3: 'pelvic_cavity'}


# ------------------------------------------------------------------------------------ data
@dataclasses.dataclass(frozen=True)
class SegData:
  images: np.ndarray   # [N, H, W, C] float32
  masks: np.ndarray    # [N, H, W] int32

  def __post_init__(self):
    im, m = self.images, self.masks
    if im.ndim != 4 or m.ndim != 3 or im.shape[:3] != m.shape:
      raise ValueError(f'images must be [N, H, W, C] and masks [N, H, W] of the same N, H, W; '
                       f'got {im.shape} and {m.shape}')
    if not len(im):
      raise ValueError('empty segmentation data set')
    if not np.isfinite(im).all():
      raise ValueError('segmentation images contain NaN or inf')

  def check_labels(self, num_classes: int, where: str = 'masks'):
    lo, hi = int(self.masks.min()), int(self.masks.max())
    if lo < 0 or hi >= num_classes:
      raise ValueError(f'{where}: labels {lo}..{hi} outside 0..{num_classes - 1}')


def load_npz_dir(path: str) -> SegData:
  """All .npz files of a folder (sorted by name), each with 'image' and 'mask'."""
  files = sorted(glob.glob(os.path.join(path, '*.npz')))
  if not files:
    raise OsteoDataError(path, 'no .npz files (each should hold "image" and "mask")')
  images, masks = [], []
  for f in files:
    try:
      with np.load(f) as z:
        if 'image' not in z or 'mask' not in z:
          raise OsteoDataError(f, f'needs arrays "image" and "mask", has {sorted(z.files)}')
        im, m = np.asarray(z['image'], np.float32), np.asarray(z['mask'])
    except OsteoDataError:
      raise
    except Exception as e:   # truncated or not an npz archive
      raise OsteoDataError(f, f'unreadable .npz ({type(e).__name__}: {e})') from e
    im = im[..., None] if im.ndim == 2 else im
    if im.ndim != 3 or m.shape != im.shape[:2]:
      raise OsteoDataError(f, f'image {im.shape} and mask {m.shape} do not match ([H, W(, C)] '
                              f'and [H, W])')
    if not np.issubdtype(m.dtype, np.integer):
      raise OsteoDataError(f, f'mask must hold integer labels, has {m.dtype}')
    if not np.isfinite(im).all():
      raise OsteoDataError(f, 'image contains NaN or inf')
    if images and (im.shape != images[0].shape):
      raise OsteoDataError(f, f'shape {im.shape} differs from {files[0]} {images[0].shape}')
    images.append(im)
    masks.append(m.astype(np.int32))
  return SegData(np.stack(images), np.stack(masks))


def shapes(n: int, hw=(64, 32), channels: int = 2, noise: float = 0.3, seed: int = 0) -> SegData:
  """Generated images of a vertical bar (1, 'spine'), a ring (2, 'pelvis') around a disc
  (3, 'pelvic cavity'), random sizes and places, per-label channel intensities + noise."""
  rng = np.random.default_rng(seed)
  h, w = hw
  y, x = np.mgrid[0:h, 0:w]
  level = rng.uniform(0.2, 1.0, (4, channels))          # one intensity per label and channel
  level[0] = 0.0
  images = np.empty((n, h, w, channels), np.float32)
  masks = np.zeros((n, h, w), np.int32)
  for i in range(n):
    m = np.zeros((h, w), np.int32)
    cx, r_out = rng.uniform(0.35, 0.65) * w, rng.uniform(0.18, 0.28) * w
    cy = rng.uniform(0.6, 0.75) * h
    d2 = (x - cx) ** 2 + (y - cy) ** 2
    m[d2 <= r_out ** 2] = 2
    m[d2 <= (0.55 * r_out) ** 2] = 3
    bw = rng.uniform(0.06, 0.12) * w
    m[(np.abs(x - cx) <= bw / 2) & (y >= rng.uniform(0.05, 0.2) * h) & (y < cy - r_out)] = 1
    img = level[m] + noise * rng.normal(size=(h, w, channels))
    images[i], masks[i] = img, m
  return SegData(images, masks)


def load(config) -> tuple[SegData, SegData]:
  """(train, test) data sets of config.data."""
  d = config.data
  if d.source == 'shapes':
    return (shapes(d.n_train, d.hw, d.channels, d.noise, d.seed),
            shapes(d.n_test, d.hw, d.channels, d.noise, d.seed + 1))
  if d.source == 'npz':
    if not d.train_dir or not d.test_dir:
      raise ConfigError('data.source npz needs data.train_dir and data.test_dir')
    return load_npz_dir(d.train_dir), load_npz_dir(d.test_dir)
  raise ConfigError(f'unknown data.source {d.source!r} (shapes or npz)')


# ------------------------------------------------------------------------------------ model
def build_model(config):
  return unet.unet_from_config(config.model)


def init_state(config, model, image_shape, total_steps):
  """TrainState for images [H, W, C]."""
  x = jnp.zeros((2,) + tuple(image_shape), jnp.float32)
  # jitted, with an 'rbg' key: compiling threefry for every parameter's initialiser took
  # ~12 s on a 2-core CPU, rbg ~2 s (only the initial values differ)
  variables = jax.jit(lambda k, v: model.init(k, v, train=False))(
      jax.random.key(config.seed, impl='rbg'), x)
  return lib.create_state(apply_fn=model.apply, params=variables['params'],
                          tx=lib.make_optimizer(config.optim, total_steps),
                          batch_stats=variables['batch_stats'])


def soft_dice_loss(logits, masks, num_classes: int, axis_name: str | None = lib.AXIS):
  """1 - mean over foreground classes of the soft Dice of softmax(logits) vs one-hot masks.

  The sums run over the *global* batch (lax.psum over `axis_name`; None outside pmap), so the
  loss and, after lib's gradient pmean, its gradient do not depend on the device count.
  """
  p = jax.nn.softmax(logits, -1)[..., 1:]
  t = jax.nn.one_hot(masks, num_classes)[..., 1:]
  inter = jnp.sum(p * t, axis=(0, 1, 2))
  den = jnp.sum(p, axis=(0, 1, 2)) + jnp.sum(t, axis=(0, 1, 2))
  if axis_name is not None:
    inter, den = lax.psum((inter, den), axis_name)
  return 1.0 - jnp.mean((2 * inter + 1.0) / (den + 1.0))


def make_loss_fn(config, model):
  """Pixel cross-entropy + dice_weight * soft Dice loss. batch: image [b, H, W, C], mask."""
  k = config.model.num_classes

  def loss_fn(params, batch_stats, batch, rng, step):
    logits, new_vars = model.apply({'params': params, 'batch_stats': batch_stats},
                                   batch['image'], train=True, mutable=['batch_stats'])
    ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, batch['mask']))
    sd = soft_dice_loss(logits, batch['mask'], k)
    loss = ce + config.loss.dice_weight * sd
    acc = jnp.mean(jnp.argmax(logits, -1) == batch['mask'])
    return loss, (new_vars['batch_stats'], dict(cross_entropy=ce, soft_dice_loss=sd,
                                                pixel_accuracy=acc))

  return loss_fn


def make_predict_fn(model):
  """Jitted (variables, images [B, H, W, C]) -> label maps [B, H, W] int32."""
  return jax.jit(lambda v, x: jnp.argmax(model.apply(v, x, train=False), -1))


def predict(predict_fn, variables, images, batch_size: int = 8) -> np.ndarray:
  out = [np.asarray(predict_fn(variables, jnp.asarray(images[i:i + batch_size])))
         for i in range(0, len(images), batch_size)]
  return np.concatenate(out).astype(np.int32)


def dice_table(pred, truth, num_classes: int) -> dict:
  """Per-label Dice (mean and sd over images, NaN-skipping) and the mean over foreground
  labels of each image, averaged."""
  labels = list(range(1, num_classes))
  per = [metrics.dice(p, t, labels) for p, t in zip(pred, truth)]
  out = {}
  for lab in labels:
    v = np.array([d[lab] for d in per], np.float64)
    out[LABELS.get(lab, str(lab))] = dict(mean=float(np.nanmean(v)), sd=float(np.nanstd(v)),
                                          n=int(np.isfinite(v).sum()))
  img_mean = np.array([np.nanmean([d[lab] for lab in labels]) for d in per])
  out['mean_foreground'] = dict(mean=float(np.mean(img_mean)), sd=float(np.std(img_mean)),
                                n=len(img_mean))
  return out


# ------------------------------------------------------------------------------------ task
def train_and_evaluate(config, workdir: str, train: SegData, test: SegData):
  """Train on `train` through lib.fit, then Dice on `test` (written to workdir/dice.json)."""
  k = config.model.num_classes
  train.check_labels(k, 'training masks')
  test.check_labels(k, 'test masks')
  if train.images.shape[-1] != test.images.shape[-1]:
    raise ValueError(f'train images have {train.images.shape[-1]} channels, test '
                     f'{test.images.shape[-1]}')
  n = len(train.images)
  model = build_model(config)
  state = init_state(config, model, train.images.shape[1:], config.steps)
  print(f'[unet] {n} training images {train.images.shape[1:]}, {len(test.images)} test, '
        f'{config.steps} steps of batch {config.batch_size} on {jax.device_count()} device(s)',
        flush=True)

  def make_batch(step):
    idx = lib.host_indices(lib.batch_indices(n, config.batch_size, config.seed, step))
    return {'image': train.images[idx], 'mask': train.masks[idx]}

  state = lib.fit(workdir=workdir, state=state, loss_fn=make_loss_fn(config, model),
                  make_batch=make_batch, total_steps=config.steps, seed=config.seed,
                  batch_size=config.batch_size, log_every=config.log_every,
                  ckpt_every=config.ckpt_every,
                  lr_fn=lib.make_schedule(config.optim, config.steps), name='unet')
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  pred = predict(make_predict_fn(model), variables, test.images, config.batch_size)
  table = dice_table(pred, test.masks, k)
  res = dict(dice=table, test_images=len(test.images), train_images=n, seed=config.seed,
             data_source=config.data.source)
  with open(os.path.join(workdir, 'dice.json'), 'w', encoding='utf-8') as f:
    json.dump(res, f, indent=1)
  print(json.dumps(res), flush=True)
  return res, variables


def run(config, workdir: str):
  train, test = load(config)
  res, _ = train_and_evaluate(config, workdir, train, test)
  return res
