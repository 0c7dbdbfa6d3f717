"""MAE pre-training of the 3-D ViT (the paper's Table 2 row "ViT / MAE"), task 'mae'.

  python -m osteojax.main --config configs/mae.py --workdir runs/mae

He et al. 2022 on the unlabeled vertebrae: each original volume (the texture pool's member 0)
is flipped at random, 75% of its patches are masked at random, the encoder sees the visible
ones, the light decoder fills the masked places with a learnt mask token and predicts each
patch's voxels; the loss is the mean squared error on the per-patch normalised voxels of the
masked patches only. The fine-tuning task loads the encoder (`--config.init.checkpoint=<dir>
--config.model.name=vit3d`) exactly as after TP-SwAV.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np

from osteojax import models
from osteojax.data import augment
from osteojax.diagnosis import pretrain
from osteojax.errors import ConfigError
from osteojax.models import vit3d
from osteojax.objectives import mae
from osteojax.train import lib


class MAEModel(nn.Module):
  """ViT encoder on the visible patches + MAE decoder -> [B, N, patch voxels]."""
  encoder: vit3d.ViT3D
  decoder: vit3d.MAEDecoder

  def __call__(self, x, keep):
    grid = self.encoder.grid(x.shape)
    visible = self.encoder.tokens(x, keep)
    return self.decoder(visible, keep, int(np.prod(grid)), grid)

  def embed(self, x):
    return self.encoder(x)


def build_model(config) -> MAEModel:
  if config.model.name != 'vit3d':
    raise ConfigError(f'MAE pre-trains the ViT: config.model.name must be vit3d, got '
                      f'{config.model.name!r}')
  d = config.mae
  return MAEModel(models.encoder_from_config(config.model),
                  vit3d.MAEDecoder(d.decoder_dim, d.decoder_depth, d.decoder_heads,
                                   config.model.vit.patch_size ** 3))


def init_state(config, model, input_shape, optim, total_steps):
  x = jnp.zeros((2,) + tuple(input_shape) + (1,), jnp.float32)
  n = int(np.prod([s // config.model.vit.patch_size for s in input_shape]))
  keep = jnp.tile(jnp.arange(mae.num_kept(n, config.mae.mask_ratio))[None], (2, 1))
  params = jax.jit(lambda k: model.init(k, x, keep)['params'])(jax.random.PRNGKey(config.seed))
  return lib.create_state(apply_fn=model.apply, params=params,
                          tx=lib.make_optimizer(optim, total_steps), batch_stats={})


def make_loss_fn(config, model):
  """loss_fn(params, batch_stats, batch, rng, step); batch['volume']: [b, D, H, W]."""
  p = config.model.vit.patch_size

  def loss_fn(params, batch_stats, batch, rng, step):
    x = batch['volume']
    n = int(np.prod([s // p for s in x.shape[1:]]))
    keys = lib.example_keys(rng, x.shape[0])
    x = jax.vmap(lambda v, k: augment.flip(v, jax.random.fold_in(k, 0),
                                           config.mae.flip_prob))(x, keys)
    keep, mask = jax.vmap(lambda k: mae.random_keep(jax.random.fold_in(k, 1), n,
                                                    config.mae.mask_ratio))(keys)
    pred = model.apply({'params': params}, x[..., None], keep)
    target = mae.normalized_targets(vit3d.patchify(x[..., None], p))
    loss = mae.masked_mse(pred, target, mask)
    return loss, (batch_stats, {'masked_fraction': jnp.mean(mask)})

  return loss_fn


def run(config, workdir: str):
  """Pre-train the ViT with MAE on the unlabeled vertebrae; checkpoints + TensorBoard."""
  model = build_model(config)                          # checks the encoder before any data
  pools, steps_per_epoch, total, optim = pretrain.unlabeled_pools(config)
  n = len(pools)
  state = init_state(config, model, pools.shape[2:], optim, total)
  print(f'[mae] {n} vertebrae, {steps_per_epoch} steps/epoch x {config.epochs} epochs = '
        f'{total} steps, batch {config.batch_size} on {jax.device_count()} device(s); mask '
        f'ratio {config.mae.mask_ratio}', flush=True)

  return pretrain.fit_unlabeled(config, workdir, state, make_loss_fn(config, model), n, optim,
                                total, pretrain.volume_batch(pools), name='mae')
