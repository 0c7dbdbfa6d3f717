"""Train the refinement regressor on its configured data and report held-out errors (JSON).

  python tools/train_refiner.py --config configs/refine.py --workdir runs/refine
  python tools/train_refiner.py --config configs/refine.py:paper --workdir runs/refine_paper

Writes checkpoints, TensorBoard events, the resolved config and refine_eval.json (mean grid
error in map cells of perturbed held-out pairs, before and after one refinement) in workdir.
"""
import os

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from osteojax.align import refine
from osteojax.data.io import atomic_write_text

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Checkpoints, TensorBoard, refine_eval.json.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  if not FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  os.makedirs(FLAGS.workdir, exist_ok=True)
  atomic_write_text(os.path.join(FLAGS.workdir, 'config.json'),
                    FLAGS.config.to_json_best_effort(indent=1))
  refine.run(FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
  app.run(main)
