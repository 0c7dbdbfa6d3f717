"""Run a few refinement-regressor train steps on fixed data and print the losses as JSON.

Used by test_register.py in subprocesses with different simulated device counts
(XLA_FLAGS=--xla_force_host_platform_device_count=N must be set before jax is imported).
"""
import json
import sys

import flax
import jax
import numpy as np

sys.path.insert(0, __file__.rsplit('/', 2)[0] + '/configs')
import refine as refine_config  # noqa: E402

from osteojax.align import refine  # noqa: E402
from osteojax.train import lib  # noqa: E402


def main(steps: int = 3):
  config = refine_config.get_config('tiny')
  d = config.data
  src, tgt, params = refine.generated_pairs(d, 8, d.seed)
  model = refine.build_model(config)
  state = refine.init_state(config, model, src.shape[1:], 10)
  p_state = lib.replicate(state)
  step = lib.make_train_step(refine.make_loss_fn(config, model))
  losses = []
  for s in range(steps):
    idx = lib.batch_indices(8, 8, 0, s)
    batch = {'src': src[idx], 'tgt': tgt[idx], 'params': params[idx]}
    p_state, m = step(p_state, lib.shard(batch), jax.random.PRNGKey(0))
    losses.append(float(flax.jax_utils.unreplicate(m)['loss']))
  final = flax.jax_utils.unreplicate(p_state)
  leaves = jax.tree_util.tree_leaves(final.params)
  print(json.dumps(dict(devices=jax.device_count(), losses=losses,
                        param_sum=float(sum(np.abs(np.asarray(x)).sum() for x in leaves)))))


if __name__ == '__main__':
  main()
