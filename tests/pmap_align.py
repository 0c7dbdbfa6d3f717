"""Run a few aligner train steps on fixed data and print the losses as JSON.

Used by test_align.py in subprocesses with different simulated device counts
(XLA_FLAGS=--xla_force_host_platform_device_count=N must be set before jax is imported).
"""
import json
import sys

import flax
import jax
import numpy as np

sys.path.insert(0, __file__.rsplit('/', 2)[0] + '/configs')
import align  # noqa: E402

from osteojax.align import encoders  # noqa: E402
from osteojax.align import train  # noqa: E402
from osteojax.train import lib  # noqa: E402


def main(encoder: str, steps: int = 3):
  config = align.get_config('tiny')
  config.model.encoder = encoder
  config.loss.temperature = 0.1
  rng = np.random.default_rng(0)
  dxa = rng.random((8, 40, 24, 2)).astype(np.float32)
  mri = rng.random((8, 24, 16, 2)).astype(np.float32)
  model = encoders.build_model(config)
  state = train.init_state(config, model, dxa.shape[1:], mri.shape[1:], 10)
  p_state = lib.replicate(state)
  step = lib.make_train_step(train.make_loss_fn(config, model))
  losses = []
  for s in range(steps):
    idx = lib.batch_indices(8, 4, 0, s)
    p_state, m = step(p_state, lib.shard({'dxa': dxa[idx], 'mri': mri[idx]}),
                      jax.random.PRNGKey(0))
    losses.append(float(flax.jax_utils.unreplicate(m)['loss']))
  final = flax.jax_utils.unreplicate(p_state)
  leaves = jax.tree_util.tree_leaves(final.params)
  print(json.dumps(dict(devices=jax.device_count(), losses=losses,
                        param_sum=float(sum(np.asarray(x).sum() for x in leaves)))))


if __name__ == '__main__':
  main(sys.argv[1])
