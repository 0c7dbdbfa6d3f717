"""VoCo pre-training of the ResNet34-3D (the paper's Table 2 row "ResNet34 / VoCo"), task 'voco'.

  python -m osteojax.main --config configs/voco.py --workdir runs/voco

Wu et al. 2024 on the unlabeled vertebrae (the texture pool's member 0, the original volume):
the ROI is tiled by grid^3 base crops, num_crops random crops of the same shape are placed
anywhere inside it, each crop is flipped at random on its own (a flip does not move a crop, so
the targets stay; VoCo's rot90 and small intensity shift are left out), and all crops of the batch go through the encoder and a projection MLP in
one forward pass (BatchNorm statistics over all of them and all devices, as VoCo's single
batch of crops). The loss (osteojax/objectives/voco.py) asks each random crop's cosine
similarity to each base crop to equal their volume overlap, and pushes the base crops apart.

Crop grid and size. VoCo tiles a 384 x 384 x 96 CT region with 4 x 4 x 1 base crops of 96^3:
cubes of its encoder's input size, one layer deep because the region is. Our ROI is a 32^3
cube around one vertebra, with no short axis, so the grid is 2 x 2 x 2 cubes of 16^3: base
crops stay cubes, every axis carries position, and a crop still holds a fair part of the
vertebral body (4 x 4 in-plane would give 8 x 8 x 32 slabs, one voxel wide in-plane from
the slim encoder's second stage on, and no position along z). VoCo resizes its 96^3 crops to
its 64^3 input; we encode crops at their own size (16^3; 32^3 at `:paper`'s 64^3 ROI): the
ResNet ends in global pooling and accepts them, and up-sampling to 32^3 would cost 8x the
compute for no new voxels. Fine-tuning then sees whole 32^3 ROIs.

The encoder's params and batch statistics sit under 'encoder', as in TP-SwAV's checkpoints, so
`configs/finetune.py --config.init.checkpoint=runs/voco` loads it the same way.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from osteojax import models
from osteojax.data import augment
from osteojax.diagnosis import pretrain
from osteojax.errors import ConfigError
from osteojax.objectives import voco
from osteojax.train import lib


class VoCoModel(nn.Module):
  """Encoder + VoCo's projection MLP: x [B, D, H, W, 1] -> embeddings [B, proj_dim].

  Two hidden layers with BatchNorm (no scale or offset, as VoCo's) and ReLU, then a linear
  output; BatchNorm is synchronised over the pmap axis in training.
  """
  encoder: nn.Module
  hidden_dim: int = 2048
  proj_dim: int = 2048
  axis_name: str | None = lib.AXIS

  @nn.compact
  def __call__(self, x, train: bool = True):
    h = self.encoder(x, train)
    for i in (1, 2):
      h = nn.Dense(self.hidden_dim, name=f'proj_hidden{i}')(h)
      h = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, use_bias=False,
                               use_scale=False, axis_name=self.axis_name if train else None,
                               name=f'proj_bn{i}')(h))
    return nn.Dense(self.proj_dim, name='proj_out')(h)


def check_config(config) -> tuple:
  """The base-crop shape of config's ROI; ConfigError on values VoCo cannot use."""
  c = config.voco
  if config.model.name != 'resnet3d':
    raise ConfigError(f'VoCo pre-trains the ResNet34-3D here: config.model.name must be '
                      f'resnet3d, got {config.model.name!r}')
  if not isinstance(c.num_crops, int) or c.num_crops < 1:
    raise ConfigError(f'config.voco.num_crops must be an integer >= 1, got {c.num_crops!r}')
  if not 0 <= c.flip_prob <= 1:
    raise ConfigError(f'config.voco.flip_prob must be in [0, 1], got {c.flip_prob!r}')
  if c.reg_weight < 0:
    raise ConfigError(f'config.voco.reg_weight must be >= 0, got {c.reg_weight!r}')
  return voco.crop_shape(tuple(config.data.roi_shape), c.grid)


def build_model(config) -> VoCoModel:
  check_config(config)
  return VoCoModel(models.encoder_from_config(config.model), config.voco.hidden_dim,
                   config.voco.proj_dim)


def init_state(config, model, crop, optim, total_steps):
  """Initial TrainState: params from config.seed (shapes do not depend on the crop size)."""
  x = jnp.zeros((2,) + tuple(crop) + (1,), jnp.float32)
  init = lambda k, v: model.init(k, v, train=False)
  variables = jax.jit(init)(jax.random.PRNGKey(config.seed), x)       # one compilation
  return lib.create_state(apply_fn=model.apply, params=variables['params'],
                          tx=lib.make_optimizer(optim, total_steps),
                          batch_stats=variables['batch_stats'])


def crops_and_targets(vol, key, c):
  """One volume [D, H, W] -> (crops [K + R, *crop]: the K base crops then the R random ones,
  each flipped at random; overlap targets [R, K]; the random crops' corners [R, 3])."""
  crop = voco.crop_shape(vol.shape, c.grid)
  ks, kf = jax.random.split(key)
  starts = voco.random_starts(ks, c.num_crops, vol.shape, crop)
  crops = jnp.concatenate([voco.base_crops(vol, c.grid), voco.random_crops(vol, starts, crop)])
  crops = jax.vmap(lambda x, k: augment.flip(x, k, c.flip_prob))(
      crops, jax.random.split(kf, crops.shape[0]))
  return crops, voco.overlap_targets(starts, crop, c.grid), starts


def draw_crops(vol, rng, c):
  """A device's batch [b, D, H, W] (inside pmap) -> crops_and_targets' outputs batched [b, ...],
  each example from its own key (lib.example_keys). The loss function's draws."""
  return jax.vmap(lambda v, key: crops_and_targets(v, key, c))(
      vol, lib.example_keys(rng, vol.shape[0]))


def make_loss_fn(config, model):
  """loss_fn(params, batch_stats, batch, rng, step); batch['volume']: [b, D, H, W]."""
  c = config.voco

  def loss_fn(params, batch_stats, batch, rng, step):
    del step
    vol = batch['volume']
    b, k = vol.shape[0], c.grid ** 3
    crops, targets, _ = draw_crops(vol, rng, c)               # [b, K + R, d, h, w], [b, R, K]
    z, new_vars = model.apply({'params': params, 'batch_stats': batch_stats},
                              crops.reshape((-1,) + crops.shape[2:] + (1,)), train=True,
                              mutable=['batch_stats'])
    z = z.reshape(b, k + c.num_crops, -1)
    loss, metrics = voco.voco_loss(z[:, :k], z[:, k:], targets, c.reg_weight)
    return loss, (new_vars['batch_stats'], metrics)

  return loss_fn


def run(config, workdir: str):
  """Pre-train the encoder with VoCo on the unlabeled vertebrae; checkpoints + TensorBoard."""
  model = build_model(config)                          # checks the config before any data
  pools, steps_per_epoch, total, optim = pretrain.unlabeled_pools(config)
  n = len(pools)
  crop = voco.crop_shape(pools.shape[2:], config.voco.grid)
  state = init_state(config, model, crop, optim, total)
  print(f'[voco] {n} vertebrae, {steps_per_epoch} steps/epoch x {config.epochs} epochs = '
        f'{total} steps, batch {config.batch_size} on {jax.device_count()} device(s); '
        f'{config.voco.grid ** 3} base crops and {config.voco.num_crops} random crops of '
        f'{"x".join(map(str, crop))} per vertebra', flush=True)

  return pretrain.fit_unlabeled(config, workdir, state, make_loss_fn(config, model), n, optim,
                                total, pretrain.volume_batch(pools), name='voco')
