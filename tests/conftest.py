"""Test-suite order: the longest files first.

`make test` runs the suite in two worker processes, a whole file each (pytest-xdist
--dist loadfile), handed out in collection order; started last, one long file would leave the
other worker idle at the end. The ranking is by each file's time on the 2-core machine
(`pytest --durations=0`, summed per file); files not named keep their order, after these.

In a worker, OpenMP (scikit-learn's gradient boosting in the oracle and baseline tests) gets one
thread: two concurrent copies of the CT-only oracle test took 32 s with OpenMP's default (a
thread per core each, spinning while they wait) and 18 s with one thread each (measured).
"""
import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

if os.environ.get('PYTEST_XDIST_WORKER'):
  os.environ.setdefault('OMP_NUM_THREADS', '1')

LONGEST_FIRST = ('test_finetune.py', 'test_pretrain.py', 'test_texture.py',
                 'test_pretrain_resume.py', 'test_baselines.py', 'test_align.py',
                 'test_alice.py', 'test_swin3d.py', 'test_swinmm.py', 'test_nnformer3d.py',
                 'test_mae.py', 'test_voco.py',
                 'test_manifest.py', 'test_bad_input.py', 'test_osteosim.py', 'test_register.py')


def pytest_collection_modifyitems(config, items):
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))   # stable within a file


@pytest.fixture(scope='session')
def load_tool():
  """load_tool(name) -> the module tools/<name>.py (the tools are scripts, not a package),
  loaded once per session."""
  loaded = {}

  def load(name):
    if name not in loaded:
      spec = importlib.util.spec_from_file_location(name,
                                                    os.path.join(ROOT, 'tools', f'{name}.py'))
      loaded[name] = importlib.util.module_from_spec(spec)
      spec.loader.exec_module(loaded[name])
    return loaded[name]
  return load
