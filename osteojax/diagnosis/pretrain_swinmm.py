"""SwinMM pre-training of the 3-D Swin-T (the paper's Table 2 row "SwinT / SwinMM" and Table 5's
SwinMM row), task 'swinmm'.

  python -m osteojax.main --config configs/swinmm.py --workdir runs/swinmm

Wang et al. 2023 (SwinMM, "masked multi-view encoder"), on the original volume of each unlabeled
vertebra (the texture pool's member 0). As in the authors' pre-training code (UCSC-VLAA/SwinMM,
Pretrain/main.py), per vertebra:
- two views x1, x2: the volume rotated by independent random quarter-turns k1, k2 in the
  sagittal (y, z) plane (the code's rotation in its (Y, Z) plane; objectives/swinmm.py says how
  its RAS axes map onto our [z, y, x] arrays);
- each masked: a random half of its patch^3 cubes set to 0 (a new mask per view);
- two more inputs: each masked view transposed (its x axis swapped with y or with z, at random:
  the code's permutations X <-> Y and X <-> Z);
- the four inputs through the shared encoder; from its last grid a light decoder reconstructs
  the volume, and from the pooled feature one linear layer predicts the rotation and another
  gives the contrastive embedding.
Losses (the code's, each with weight 1 in config.swinmm.weights):
- recon: mean squared error on the masked voxels against each view's standardised volume
  (norm_pix_loss), for x1, x2 and for the transposed inputs' reconstructions transposed back,
  summed over those two pairs (the code's loss1 + loss2);
- mutual: the reconstruction of each transposed input, transposed back, against that of the
  untransposed view, on the masked voxels (mutual learning: views must agree);
- rotation: cross-entropy of k1, k2 predicted from x1, x2;
- contrast: NT-Xent (temperature 0.5) between the embeddings of x1 and x2 of each vertebra.

Choices where we differ, and why:
- The code takes the rotation and contrastive features from tokens 0 and 1 of the last grid
  (2^3 tokens at its 64^3 crops); the slim encoder's last grid at 32^3 is one token, so both
  heads read the pooled feature (the one fine-tuning reads).
- The decoder is the code's default ("vae": per upsampling a 3^3 convolution halving the
  channels down to a sixteenth, a norm, LeakyReLU, trilinear x2; then a 1^3 convolution), with
  LayerNorm over the channels in place of InstanceNorm: an instance norm of the 1^3 last grid
  would set every channel to zero. It has log2(patch * 2^stages) upsamplings (5, as the code's).
- Mask cubes of 8 voxels at 32^3 (16 at `:paper` 64^3, the code's): 4^3 cubes either way.
  Masks are drawn per vertebra (the code draws one per batch). The code zeroes the complement
  of the round(n mask_ratio) cubes it draws, n - round(n mask_ratio); we zero round(n
  mask_ratio), the fraction the ratio names: the same 32 of 64 cubes at the ratio 0.5.
- Mutual learning on both pairs (x1 and its transposition, x2 and its transposition), averaged;
  the code uses the first pair only. Its optional mutual term across rotations
  (--mutual_learning_on_more_view, off in its run.sh) is not implemented.
- Contrast over the global batch (embeddings gathered across devices), the code per GPU.
- No flips: a flip composed with a rotation is another rotation of a flipped volume, so
  the rotation label would become ambiguous; the code flips nothing either (it crops, which
  would cut our vertebra ROI).
The paper's text was not at hand here: the losses, weights, views and masking follow the
public code; the paper's abstract names the same four proxy tasks. Fine-tuning loads the
encoder (`--config.init.checkpoint=<dir> --config.model.name=swin3d`) as after TP-SwAV.
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from osteojax import models
from osteojax.diagnosis import pretrain
from osteojax.errors import ConfigError
from osteojax.models import resnet3d, swin3d
from osteojax.objectives import swinmm
from osteojax.train import lib


class ReconstructionDecoder(nn.Module):
  """The last Swin grid [B, d, h, w, C] -> a volume [B, D, H, W] (SwinMM's "vae" decoder).

  Per upsampling i (num_up of them): 3^3 convolution to C / min(2^(i+1), 16) channels,
  LayerNorm over channels, LeakyReLU, trilinear x2; then a 1^3 convolution to one channel.
  """
  num_up: int

  @nn.compact
  def __call__(self, f):
    c = f.shape[-1]
    up = lambda a: jax.image.resize(a, (a.shape[0],) + tuple(2 * s for s in a.shape[1:4])
                                    + a.shape[4:], 'trilinear')
    for i in range(self.num_up):
      f = resnet3d.Conv3D(max(c // min(2 ** (i + 1), 16), 1), name=f'conv{i + 1}')(f)
      f = nn.leaky_relu(nn.LayerNorm(swin3d.LN_EPS, name=f'norm{i + 1}')(f))
      if i < self.num_up - 1:
        f = up(f)
    # The 1^3 convolution and the trilinear upsampling are both linear (the interpolation
    # weights sum to 1, so the bias passes through): convolving first gives the same volume
    # and upsamples one channel instead of C / 16.
    return up(nn.Dense(1, name='out')(f)[..., 0])


class SwinMMModel(nn.Module):
  """Swin-T encoder + reconstruction decoder + rotation and contrastive heads.

  x [B, D, H, W, 1] -> (rotation logits [B, 4], contrastive embedding [B, contrast_dim],
  reconstruction [B, D, H, W]).
  """
  encoder: swin3d.SwinT3D
  decoder: ReconstructionDecoder
  contrast_dim: int

  @nn.compact
  def __call__(self, x):
    f = self.encoder.features(x)
    pooled = jnp.mean(f, axis=(1, 2, 3))
    rot = nn.Dense(swinmm.NUM_ROTATIONS, name='rotation_head')(pooled)
    z = nn.Dense(self.contrast_dim, name='contrastive_head')(pooled)
    return rot, z, self.decoder(f)


def num_upsamplings(swin) -> int:
  """log2 of the encoder's total downsampling, patch_size * 2^stages (one decoder step each)."""
  return int(round(math.log2(swin.patch_size))) + len(swin.depths)


def check_config(config):
  """ConfigError unless the ROI (config.data.roi_shape, [D, H, W]) suits the views, masks and
  decoder and the loss weights are named."""
  c, s, roi_shape = config.swinmm, config.model.swin, tuple(config.data.roi_shape)
  if config.model.name != 'swin3d':
    raise ConfigError(f'SwinMM pre-trains the Swin-T: config.model.name must be swin3d, got '
                      f'{config.model.name!r}')
  if s.patch_size & (s.patch_size - 1):
    raise ConfigError(f'SwinMM decoder: model.swin.patch_size must be a power of 2, got '
                      f'{s.patch_size}')
  if len(set(roi_shape)) != 1:
    raise ConfigError(f'SwinMM rotates and transposes the volume: its ROI must be a cube, got '
                      f'{tuple(roi_shape)}')
  down = s.patch_size * 2 ** len(s.depths)
  edge = roi_shape[0]
  if edge % down:
    raise ConfigError(f'SwinMM decoder: the ROI edge {edge} must be a multiple of patch_size * '
                      f'2^stages = {down}')
  if c.mask_patch <= 0 or edge % c.mask_patch:
    raise ConfigError(f'swinmm.mask_patch {c.mask_patch} must divide the ROI edge {edge}')
  n = (edge // c.mask_patch) ** 3
  if not 0 < swinmm.num_masked(n, c.mask_ratio) < n:
    raise ConfigError(f'swinmm.mask_ratio {c.mask_ratio} masks none or all of the {n} patches')
  if set(c.weights) != {'rotation', 'contrast', 'recon', 'mutual'}:
    raise ConfigError(f'swinmm.weights must name rotation, contrast, recon, mutual; got '
                      f'{", ".join(sorted(c.weights))}')


def build_model(config) -> SwinMMModel:
  check_config(config)
  return SwinMMModel(models.encoder_from_config(config.model),
                     ReconstructionDecoder(num_upsamplings(config.model.swin)),
                     config.swinmm.contrast_dim)


def init_state(config, model, input_shape, optim, total_steps):
  x = jnp.zeros((2,) + tuple(input_shape) + (1,), jnp.float32)
  params = jax.jit(lambda k: model.init(k, x)['params'])(jax.random.PRNGKey(config.seed))
  return lib.create_state(apply_fn=model.apply, params=params,
                          tx=lib.make_optimizer(optim, total_steps), batch_stats={})


def draw_views(x, key, c):
  """One vertebra's SwinMM inputs. x [D, H, W] -> dict of
  rot [2] (k1, k2), perm [2] (1 or 2), mask [2, D, H, W] (1 = masked), views [2, D, H, W]
  (x1, x2, unmasked) and inputs [4, D, H, W] (x1, x2 masked, then each transposed)."""
  kr, kp, km = jax.random.split(key, 3)
  rot = jax.random.randint(kr, (2,), 0, swinmm.NUM_ROTATIONS)
  perm = jax.random.randint(kp, (2,), 1, len(swinmm.TRANSPOSES))
  mask = jax.vmap(lambda k: swinmm.patch_mask(k, x.shape, c.mask_patch, c.mask_ratio))(
      jax.random.split(km, 2))
  views = jax.vmap(lambda k: swinmm.rotate(x, k))(rot)
  masked = views * (1 - mask)
  inputs = jnp.concatenate([masked, jax.vmap(swinmm.transpose)(masked, perm)])
  return dict(rot=rot, perm=perm, mask=mask, views=views, inputs=inputs)


def swinmm_terms(outputs, drawn, c, gather=lambda z: z):
  """The four loss terms and metrics from the model's outputs on the inputs of draw_views.

  outputs: (rotation logits [b, 4, 4], embeddings [b, 4, K], reconstructions [b, 4, D, H, W]);
  drawn: draw_views' dict, batched [b, ...]. gather maps local embeddings [b, 2, K] to the
  global batch's (lax.all_gather inside pmap).
  """
  rot_logits, z, rec = outputs
  mask, rot, perm = drawn['mask'], drawn['rot'], drawn['perm']
  target = drawn['views']
  if c.norm_target:
    target = swinmm.normalized_volumes(target.reshape((-1,) + target.shape[2:])).reshape(
        target.shape)
  flat = lambda a: a.reshape((-1,) + a.shape[2:])          # [b, 2, ...] -> [2b, ...]
  back = jax.vmap(jax.vmap(swinmm.transpose))(rec[:, 2:], perm)    # transposed back
  recon = (swinmm.masked_mse(rec[:, :2], target, mask)
           + swinmm.masked_mse(back, target, mask))
  mutual = swinmm.mutual_loss(flat(rec[:, :2]), flat(rec[:, 2:]), flat(perm), flat(mask))
  rot_logits = flat(rot_logits[:, :2])
  rotation = swinmm.rotation_loss(rot_logits, flat(rot))
  zg = gather(z[:, :2])
  contrast = swinmm.nt_xent(zg[:, 0], zg[:, 1], c.temperature)
  terms = dict(rotation=rotation, contrast=contrast, recon=recon, mutual=mutual)
  metrics = dict(terms, rotation_accuracy=jnp.mean(jnp.argmax(rot_logits, -1) == flat(rot)),
                 masked_fraction=jnp.mean(mask))
  return swinmm.total_loss(terms, c.weights), metrics


def make_loss_fn(config, model):
  """loss_fn(params, batch_stats, batch, rng, step); batch['volume']: [b, D, H, W]."""
  c = config.swinmm

  def loss_fn(params, batch_stats, batch, rng, step):
    del step
    x = batch['volume']
    b = x.shape[0]
    drawn = jax.vmap(lambda v, k: draw_views(v, k, c))(x, lib.example_keys(rng, b))
    inputs = drawn['inputs']
    rot, z, rec = model.apply({'params': params},
                              inputs.reshape((-1,) + inputs.shape[2:] + (1,)))
    outputs = (rot.reshape(b, 4, -1), z.reshape(b, 4, -1), rec.reshape(inputs.shape))
    loss, metrics = swinmm_terms(outputs, drawn, c,
                                 gather=lambda a: lax.all_gather(a, lib.AXIS, tiled=True))
    return loss, (batch_stats, metrics)

  return loss_fn


def run(config, workdir: str):
  """Pre-train the Swin-T with SwinMM on the unlabeled vertebrae; checkpoints + TensorBoard."""
  model = build_model(config)                          # checks the config before any data
  pools, steps_per_epoch, total, optim = pretrain.unlabeled_pools(config)
  n = len(pools)
  state = init_state(config, model, pools.shape[2:], optim, total)
  c = config.swinmm
  print(f'[swinmm] {n} vertebrae, {steps_per_epoch} steps/epoch x {config.epochs} epochs = '
        f'{total} steps, batch {config.batch_size} on {jax.device_count()} device(s); 4 inputs '
        f'a vertebra, mask ratio {c.mask_ratio} of {c.mask_patch}^3 cubes', flush=True)

  return pretrain.fit_unlabeled(config, workdir, state, make_loss_fn(config, model), n, optim,
                                total, pretrain.volume_batch(pools), name='swinmm')
