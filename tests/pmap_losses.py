"""Run a few TP-SwAV / SwAV train steps on fixed data and print the losses as JSON.

Used by test_pretrain.py in subprocesses with different simulated device counts
(XLA_FLAGS=--xla_force_host_platform_device_count=N must be set before jax is imported).
"""
import json
import sys

import flax
import jax
import numpy as np

sys.path.insert(0, __file__.rsplit('/', 2)[0] + '/configs')
import tp_swav  # noqa: E402

from osteojax import pretrain  # noqa: E402
from osteojax.train import lib  # noqa: E402


def main(views: str, steps: int = 3):
  config = tp_swav.get_config('tiny')
  config.views = views
  rng = np.random.default_rng(0)
  data = rng.random((16, 5, 16, 16, 16)).astype(np.float32)
  model = pretrain.build_model(config)
  optim = pretrain.optimizer_config(config, 2)
  state = pretrain.init_state(config, model, data.shape[2:], optim, 10)
  p_state = flax.jax_utils.replicate(state)
  step = lib.make_train_step(pretrain.make_loss_fn(config, model),
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
