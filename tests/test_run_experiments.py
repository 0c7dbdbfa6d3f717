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
