"""Run a few U-Net segmentation train steps on fixed data and print the losses as JSON.

Used by test_segment.py in subprocesses with different simulated device counts
(XLA_FLAGS=--xla_force_host_platform_device_count=N must be set before jax is imported).
"""
import json
import sys

import flax
import jax
import numpy as np

sys.path.insert(0, __file__.rsplit('/', 2)[0] + '/configs')
import unet as unet_config  # noqa: E402

from osteojax.align import segment  # noqa: E402
from osteojax.train import lib  # noqa: E402


def main(steps: int = 3):
  config = unet_config.get_config('tiny')
  data = segment.shapes(8, (16, 16), 2, 0.3, seed=0)
  model = segment.build_model(config)
  state = segment.init_state(config, model, data.images.shape[1:], 10)
  p_state = lib.replicate(state)
  step = lib.make_train_step(segment.make_loss_fn(config, model))
  losses = []
  for s in range(steps):
    idx = lib.batch_indices(8, 8, 0, s)
    batch = {'image': data.images[idx], 'mask': data.masks[idx]}
    p_state, m = step(p_state, lib.shard(batch), jax.random.PRNGKey(0))
    losses.append(float(flax.jax_utils.unreplicate(m)['loss']))
  final = flax.jax_utils.unreplicate(p_state)
  leaves = jax.tree_util.tree_leaves(final.params)
  stats = jax.tree_util.tree_leaves(final.batch_stats)
  print(json.dumps(dict(devices=jax.device_count(), losses=losses,
                        param_sum=float(sum(np.abs(np.asarray(x)).sum() for x in leaves)),
                        stats_sum=float(sum(np.asarray(x).sum() for x in stats)))))


if __name__ == '__main__':
  main()
