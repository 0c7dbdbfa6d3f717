"""osteojax entry point: `python -m osteojax.main --config configs/<name>.py --workdir <dir>`.

The task is a config field (`config.task`); `osteojax.tasks` maps it to the code that runs it.
Override any config value from the command line, e.g. `--config.data.scale=0.2`.
"""
from absl import app
from absl import flags
from ml_collections import config_flags

from osteojax import tasks

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Outputs: checkpoints, TensorBoard, tables, figures.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  tasks.run(FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
  app.run(main)
