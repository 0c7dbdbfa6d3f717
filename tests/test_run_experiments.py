"""The grid's rows and the paper-shaped tables it writes (tools/run_experiments.py)."""
import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tool():
  spec = importlib.util.spec_from_file_location(
      'run_experiments', os.path.join(ROOT, 'tools', 'run_experiments.py'))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def test_paper_tables_name_grid_rows_with_the_papers_labels():
  t = _tool()
  for _, level, rows, _ in t.PAPER_TABLES:
    assert level in ('vertebra', 'patient') and set(rows) <= set(t.ROWS)
  assert set(t.TABLE2_ROWS) | {'swin_tpswav_class', 'swin_tpswav_unified_moe',
                               'tpswav_class_bmd', 'tpswav_class_level'} == set(t.ROWS)
  assert t.row_labels('tpswav_unified_moe') == ('tpswav_unified_moe', 'ResNet34+MoE', 'TP-SwAV',
                                                'unified')
  assert t.row_labels('alice_nnformer_class')[1:] == ('nnFormer', 'Alice', 'class')
  assert t.row_labels('tpswav_class_level')[3] == 'class + position'
  assert t.BASE in t.TABLE2_ROWS and t.BASE in t.DEFAULT_ROWS


def test_a_run_made_with_other_values_is_not_reused(tmp_path):
  """A finished or partial run whose saved config differs from the grid's values stops the grid
  with one line; one that agrees (a checkpoint compared by folder name) goes on."""
  import json
  import pytest
  t = _tool()
  wd = tmp_path / 'swin_scratch_class_s0'
  wd.mkdir()
  (wd / 'config.json').write_text(json.dumps(
      {'seed': 0, 'optim': {'lr': 1e-4}, 'head': {'moe': False},
       'init': {'checkpoint': '/elsewhere/runs/tp_swav_s0'}}))
  t.check_reuse(str(wd), {'seed': 0, 'optim.lr': 1e-4, 'head.moe': False,
                          'init.checkpoint': str(tmp_path / 'runs' / 'tp_swav_s0'),
                          'loss.level': 0.5})           # a key the saved config lacks: skipped
  t.check_reuse(str(tmp_path / 'not_run'), {'optim.lr': 3e-4})
  for over, said in (({'optim.lr': 3e-4}, 'optim.lr=0.0001, this grid asks 0.0003'),
                     ({'head.moe': True}, 'head.moe=False'),
                     ({'init.checkpoint': '/x/swav_s0'}, 'init.checkpoint=/elsewhere')):
    with pytest.raises(SystemExit, match=said) as e:
      t.check_reuse(str(wd), over)
    assert '\n' not in str(e.value)
