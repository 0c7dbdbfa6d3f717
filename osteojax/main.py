"""osteojax entry point: `python -m osteojax.main --config configs/<name>.py --workdir <dir>`.

The task is a config field (`config.task`); `osteojax.tasks` maps it to the code that runs it.
Override any config value from the command line, e.g. `--config.data.scale=0.2`.
"""
import os
import sys

import jax
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from osteojax import tasks
from osteojax.data.io import OsteoDataError
from osteojax.errors import ConfigError

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Outputs: checkpoints, TensorBoard, tables, figures.')
flags.DEFINE_bool('multihost', False, 'Call jax.distributed.initialize() first (one process '
                  'per host; see launch/multihost.sh).')
flags.mark_flags_as_required(['config', 'workdir'])


def initialize_distributed():
  """jax.distributed.initialize for one process of several (before any other jax call).

  COORDINATOR=host:port, NUM_PROCESSES, PROCESS_ID select the processes by hand (e.g.
  launch/local_multiprocess.sh); without them TPU pods and SLURM are found from the
  environment. On CPU the collectives across processes go through gloo. A process that does
  not come up, or that dies, makes the others stop after DISTRIBUTED_TIMEOUT_S seconds (default
  300) instead of waiting forever.
  """
  timeout = int(os.environ.get('DISTRIBUTED_TIMEOUT_S', '300'))
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')   # only the CPU backend's
  kw = dict(initialization_timeout=timeout, heartbeat_timeout_seconds=max(10, timeout // 3),
            shutdown_timeout_seconds=timeout)
  print(f'[distributed] process {os.environ.get("PROCESS_ID", "?")} of '
        f'{os.environ.get("NUM_PROCESSES", "?")} meeting at '
        f'{os.environ.get("COORDINATOR", "(from the environment)")}; a process missing for '
        f'{timeout} s stops the others (DISTRIBUTED_TIMEOUT_S)', file=sys.stderr, flush=True)
  if os.environ.get('COORDINATOR'):
    jax.distributed.initialize(os.environ['COORDINATOR'], int(os.environ['NUM_PROCESSES']),
                               int(os.environ['PROCESS_ID']), **kw)
  else:                              # TPU pods and SLURM: found from the environment
    jax.distributed.initialize(**kw)


def main(argv):
  del argv
  if not FLAGS['verbosity'].present:   # orbax logs every save at INFO; --verbosity=0 shows it
    logging.set_verbosity(logging.WARNING)
  if FLAGS.multihost:
    try:
      initialize_distributed()
    except Exception as e:           # noqa: BLE001 - any failure to meet: one line, exit 2
      first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      print(f'error: jax.distributed: process {os.environ.get("PROCESS_ID", "?")} of '
            f'{os.environ.get("NUM_PROCESSES", "?")} could not meet the other processes '
            f'({first[:200]})', file=sys.stderr, flush=True)
      sys.exit(2)
  try:
    tasks.run(FLAGS.config, FLAGS.workdir)
  except (OsteoDataError, ConfigError) as e:   # bad input or config value: one line, status 2
    print(f'error: {e}', file=sys.stderr, flush=True)
    sys.exit(2)


if __name__ == '__main__':
  app.run(main)
