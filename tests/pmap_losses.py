"""Run a few train steps (TP-SwAV / SwAV / MAE / VoCo / SwinMM / Alice / fine-tuning of ResNet, Swin
or nnFormer) on fixed data; print the losses as JSON.

Used by test_pretrain.py in subprocesses with different simulated device counts
(XLA_FLAGS=--xla_force_host_platform_device_count=N must be set before jax is imported).
"""
import json
import sys

import flax
import jax
import numpy as np

sys.path.insert(0, __file__.rsplit('/', 2)[0] + '/configs')
import alice as alice_config  # noqa: E402
import finetune as finetune_config  # noqa: E402
import mae as mae_config  # noqa: E402
import swinmm as swinmm_config  # noqa: E402
import tp_swav  # noqa: E402
import voco as voco_config  # noqa: E402

from osteojax.diagnosis import (finetune, pretrain, pretrain_alice, pretrain_mae,  # noqa: E402
                                pretrain_swinmm, pretrain_voco)
from osteojax.objectives import alice  # noqa: E402
from osteojax.train import lib  # noqa: E402


def main_finetune(steps: int = 3, encoder: str = 'resnet3d', batch: int = 8, edge: int = 16):
  """MoE + unified loss on random volumes (edge^3) and labels, `batch` over the simulated
  devices."""
  config = finetune_config.get_config('tiny')
  config.model.name = encoder
  rng = np.random.default_rng(0)
  data = dict(image=rng.random((16, edge, edge, edge)).astype(np.float32),
              device=rng.integers(0, 3, 16).astype(np.int32),
              label=rng.integers(0, 2, 16).astype(np.int32),
              bmd_z=rng.normal(size=16).astype(np.float32),
              level=rng.integers(12, 16, 16).astype(np.int32))
  data['class_weight'] = finetune.class_weights(data['label'], 'balanced')
  model = finetune.build_model(config)
  state = finetune.init_state(config, model, (edge,) * 3, finetune._optim(config, 2), 10)
  p_state = lib.replicate(state)
  step = lib.make_train_step(finetune.make_loss_fn(config, model))
  losses = []
  for s in range(steps):
    idx = lib.batch_indices(16, batch, 0, s)
    p_state, m = step(p_state, lib.shard({k: v[idx] for k, v in data.items()}),
                      jax.random.PRNGKey(0))
    losses.append(float(flax.jax_utils.unreplicate(m)['loss']))
  gate = flax.jax_utils.unreplicate(p_state).params['head']['gate']['kernel']
  print(json.dumps(dict(devices=jax.device_count(), losses=losses,
                        proto_sum=float(np.asarray(gate).sum()))))


def main_mae(steps: int = 4):
  """MAE on random volumes, batch 8 over the simulated devices (per-example masks)."""
  config = mae_config.get_config('tiny')
  data = np.random.default_rng(0).random((16, 16, 16, 16)).astype(np.float32)
  model = pretrain_mae.build_model(config)
  state = pretrain_mae.init_state(config, model, data.shape[1:], pretrain.optimizer_config(
      config, 2), 10)
  p_state = lib.replicate(state)
  step = lib.make_train_step(pretrain_mae.make_loss_fn(config, model))
  losses = []
  for s in range(steps):
    p_state, m = step(p_state, lib.shard({'volume': data[lib.batch_indices(16, 8, 0, s)]}),
                      jax.random.PRNGKey(0))
    losses.append(float(flax.jax_utils.unreplicate(m)['loss']))
  final = flax.jax_utils.unreplicate(p_state).params['encoder']['patch_embed']['kernel']
  print(json.dumps(dict(devices=jax.device_count(), losses=losses,
                        proto_sum=float(np.asarray(final).sum()))))


def main_voco(steps: int = 2):
  """VoCo on random volumes, batch 4 over the simulated devices (per-example crops, BatchNorm
  over all crops of all devices: on 4 devices one vertebra's crops each)."""
  config = voco_config.get_config('tiny')
  data = np.random.default_rng(0).random((16, 16, 16, 16)).astype(np.float32)
  model = pretrain_voco.build_model(config)
  crop = pretrain_voco.check_config(config)
  state = pretrain_voco.init_state(config, model, crop, pretrain.optimizer_config(config, 2), 10)
  p_state = lib.replicate(state)
  step = lib.make_train_step(pretrain_voco.make_loss_fn(config, model))
  losses = []
  for s in range(steps):
    p_state, m = step(p_state, lib.shard({'volume': data[lib.batch_indices(16, 4, 0, s)]}),
                      jax.random.PRNGKey(0))
    losses.append(float(flax.jax_utils.unreplicate(m)['loss']))
  final = flax.jax_utils.unreplicate(p_state)
  stem = final.params['encoder']['stem']['kernel']
  print(json.dumps(dict(devices=jax.device_count(), losses=losses,
                        proto_sum=float(np.asarray(stem).sum()),
                        stats_sum=float(sum(np.asarray(x).sum() for x in
                                            jax.tree_util.tree_leaves(final.batch_stats))))))


def main_swinmm(steps: int = 2):
  """SwinMM on random volumes, batch 4 over the simulated devices (per-example views and masks,
  the contrastive loss over the gathered global batch: on 4 devices one vertebra each)."""
  config = swinmm_config.get_config('tiny')
  data = np.random.default_rng(0).random((16, 16, 16, 16)).astype(np.float32)
  model = pretrain_swinmm.build_model(config)
  state = pretrain_swinmm.init_state(config, model, data.shape[1:], pretrain.optimizer_config(
      config, 2), 10)
  p_state = lib.replicate(state)
  step = lib.make_train_step(pretrain_swinmm.make_loss_fn(config, model))
  losses, terms = [], []
  for s in range(steps):
    p_state, m = step(p_state, lib.shard({'volume': data[lib.batch_indices(16, 4, 0, s)]}),
                      jax.random.PRNGKey(0))
    m = flax.jax_utils.unreplicate(m)
    losses.append(float(m['loss']))
    terms.append([float(m[k]) for k in ('rotation', 'contrast', 'recon', 'mutual')])
  final = flax.jax_utils.unreplicate(p_state).params['encoder']['patch_embed']['kernel']
  print(json.dumps(dict(devices=jax.device_count(), losses=losses, terms=terms,
                        proto_sum=float(np.asarray(final).sum()))))


def main_alice(steps: int = 2):
  """Alice on random volumes, batch 4 pairs over the simulated devices (per-example masks,
  partners of the same level from other 'patients', the teacher in batch_stats; the teacher
  check at step 1 catches an average off by one step)."""
  config = alice_config.get_config('tiny')
  config.alice.momentum_teacher = 0.5     # the teacher moves by half the student's steps, so
                                          # that an average off by one step shows
  data = np.random.default_rng(0).random((16, 16, 16, 16)).astype(np.float32)
  pairs = pretrain_alice.LevelPairs(np.arange(16) % 4, np.arange(16) // 8)
  model = pretrain_alice.build_model(config)
  state = pretrain_alice.init_state(config, model, data.shape[1:], pretrain.optimizer_config(
      config, 2), 10)
  p_state = lib.replicate(state)
  step = lib.make_train_step(pretrain_alice.make_loss_fn(config, model, 2, 10))
  student = lambda st: {n: st.params[n] for n in pretrain_alice.TEACHER}
  weights = [jax.device_get(student(state))]       # the student before each step
  losses, teacher_err = [], 0.0
  for s in range(steps):
    idx = lib.batch_indices(16, 4, 0, s)
    partners = pairs.partners(idx, pretrain_alice.partner_rng(0, s))
    p_state, m = step(p_state, lib.shard({'query': data[idx], 'anchor': data[partners]}),
                      jax.random.PRNGKey(0))
    losses.append(float(flax.jax_utils.unreplicate(m)['loss']))
    host = jax.device_get(flax.jax_utils.unreplicate(p_state))
    weights.append(student(host))
    # step s used (and stored) the teacher of Alice's update after step s - 1: the average of
    # the previous teacher and the weights step s started from, with step s - 1's momentum
    if s >= 1:
      mom = float(alice.teacher_momentum(s - 1, 10, config.alice.momentum_teacher))
      want = jax.tree_util.tree_map(lambda t, w: mom * t + (1 - mom) * w, previous, weights[s])
      teacher_err = max(teacher_err, max(float(np.abs(a - b).max()) for a, b in zip(
          jax.tree_util.tree_leaves(host.batch_stats['teacher']),
          jax.tree_util.tree_leaves(want))))
    else:
      teacher_err = max(float(np.abs(a - b).max()) for a, b in zip(
          jax.tree_util.tree_leaves(host.batch_stats['teacher']),
          jax.tree_util.tree_leaves(weights[0])))      # step 0: the initial student itself
    previous = host.batch_stats['teacher']
  teacher = host.batch_stats['teacher']['encoder']['embed1']['conv1']['conv']['kernel']
  print(json.dumps(dict(devices=jax.device_count(), losses=losses,
                        proto_sum=float(np.asarray(teacher).sum()),
                        center_sum=float(np.asarray(host.batch_stats['center2']).sum()),
                        teacher_err=teacher_err)))


def main(views: str, steps: int = 4):
  if views == 'mae':
    return main_mae(steps)
  if views == 'voco':
    return main_voco()
  if views == 'swinmm':
    return main_swinmm()
  if views == 'alice':
    return main_alice()
  if views == 'finetune':
    return main_finetune(steps)
  if views == 'finetune_swin':
    return main_finetune(steps, 'swin3d')
  if views == 'finetune_nnformer':     # as small as it runs: 2 steps, one 8^3 volume a device
    return main_finetune(2, 'nnformer3d', batch=4, edge=8)
  config = tp_swav.get_config('tiny')
  config.views = views
  if views == 'crops':
    config.swav.small_crops = 2          # SwAV multi-crop
  # queue_length 16 = 2 global batches: full, and used, from step 2 on
  rng = np.random.default_rng(0)
  data = rng.random((16, 5, 16, 16, 16)).astype(np.float32)
  model = pretrain.build_model(config)
  optim = pretrain.optimizer_config(config, 2)
  state = pretrain.init_state(config, model, data.shape[2:], optim, 10)
  p_state = lib.replicate(state)
  step = lib.make_train_step(pretrain.make_loss_fn(config, model, steps_per_epoch=2),
                             post_update=pretrain.post_update)
  losses = []
  for s in range(steps):
    batch = {'pool': data[lib.batch_indices(16, 8, 0, s)]}
    p_state, m = step(p_state, lib.shard(batch), jax.random.PRNGKey(0))
    losses.append(float(flax.jax_utils.unreplicate(m)['loss']))
  final = flax.jax_utils.unreplicate(p_state).params['prototypes']['kernel']
  print(json.dumps(dict(devices=jax.device_count(), losses=losses,
                        proto_sum=float(np.asarray(final).sum()))))


if __name__ == '__main__':
  main(sys.argv[1])
