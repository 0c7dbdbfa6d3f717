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

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Outputs: checkpoints, TensorBoard, tables, figures.')
flags.DEFINE_bool('multihost', False, 'Call jax.distributed.initialize() first (one process '
                  'per host; see launch/multihost.sh).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  if not FLAGS['verbosity'].present:   # orbax logs every save at INFO; --verbosity=0 shows it
    logging.set_verbosity(logging.WARNING)
  if FLAGS.multihost:
    if os.environ.get('COORDINATOR'):
      jax.distributed.initialize(os.environ['COORDINATOR'], int(os.environ['NUM_PROCESSES']),
                                 int(os.environ['PROCESS_ID']))
    else:                            # TPU pods and SLURM: found from the environment
      jax.distributed.initialize()
  try:
    tasks.run(FLAGS.config, FLAGS.workdir)
  except OsteoDataError as e:        # bad input: one line, exit status 2
    print(f'error: {e}', file=sys.stderr, flush=True)
    sys.exit(2)


if __name__ == '__main__':
  app.run(main)
