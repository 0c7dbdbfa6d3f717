"""The grid's rows and the paper-shaped tables it writes (tools/run_experiments.py)."""


def test_paper_tables_name_grid_rows_with_the_papers_labels(load_tool):
  t = load_tool('run_experiments')
  for _, level, rows, _ in t.PAPER_TABLES:
    assert level in ('vertebra', 'patient') and set(rows) <= set(t.ROWS)
  assert set(t.TABLE2_ROWS) | {'swin_tpswav_class', 'swin_tpswav_unified_moe',
                               'tpswav_class_bmd', 'tpswav_class_level'} == set(t.ROWS)
  assert t.row_labels('tpswav_unified_moe') == ('tpswav_unified_moe', 'ResNet34+MoE', 'TP-SwAV',
                                                'unified')
  assert t.row_labels('alice_nnformer_class')[1:] == ('nnFormer', 'Alice', 'class')
  assert t.row_labels('tpswav_class_level')[3] == 'class + position'
  assert t.BASE in t.TABLE2_ROWS and t.BASE in t.DEFAULT_ROWS


def test_a_run_made_with_other_values_is_not_reused(tmp_path, load_tool):
  """A finished or partial run whose saved config differs from the one the grid would give it
  (an override or a default of the config file) stops the grid with one line; one that agrees
  goes on: a checkpoint compared by folder name, bookkeeping keys and keys the saved config
  lacks are not compared."""
  import json
  import pytest
  t = load_tool('run_experiments')
  over = {'seed': 0, 'optim.lr': 1e-4, 'head.moe': False, 'model.name': 'swin3d',
          'init.checkpoint': str(tmp_path / 'runs' / 'tp_swav_s0')}
  flat = t.expected_config('finetune.py', '', over)
  assert flat['optim.lr'] == 1e-4 and flat['model.name'] == 'swin3d' and flat['seed'] == 0

  def saved(**edits):
    d = {**flat, 'init.checkpoint': '/elsewhere/runs/tp_swav_s0', **edits}
    d.pop('loss.level')                          # a key added since that run: not compared
    nested = {}
    for k, v in d.items():
      *path, last = k.split('.')
      node = nested
      for p in path:
        node = node.setdefault(p, {})
      node[last] = v
    wd = tmp_path / 'run'
    wd.mkdir(exist_ok=True)
    (wd / 'config.json').write_text(json.dumps(nested))
    return str(wd)

  t.check_reuse(saved(), 'finetune.py', '', over)
  t.check_reuse(saved(log_every=3), 'finetune.py', '', over)          # bookkeeping
  t.check_reuse(str(tmp_path / 'not_run'), 'finetune.py', '', over)
  for edits, said in (({'optim.lr': 3e-4}, 'optim.lr=0.0003, this grid asks 0.0001'),
                      ({'head.moe': True}, 'head.moe=True'),
                      ({'head.moe': 0}, 'head.moe=0'),             # a number is not a bool
                      ({'epochs': flat['epochs'] + 1}, 'epochs='),     # a default changed since
                      ({'init.checkpoint': '/x/swav_s0'}, 'init.checkpoint=/x/swav_s0')):
    with pytest.raises(SystemExit, match=said) as e:
      t.check_reuse(saved(**edits), 'finetune.py', '', over)
    assert '\n' not in str(e.value)


def test_a_run_started_by_the_grids_own_command_line_is_reused(tmp_path, load_tool):
  """The saved config of a run launched by the grid's command line (its own overrides, parsed
  by osteojax.main's config flag, saved as tasks.run saves it) passes the reuse check, and the
  same run at another seed or learning rate does not: the check and the launcher agree on every
  override's type."""
  import pytest
  from absl import flags
  from ml_collections import config_flags
  t = load_tool('run_experiments')

  def launch(config_file, over, workdir):
    argv = ['osteojax.main'] + t._main_cmd(config_file, '', str(workdir), over)[3:]
    fv = flags.FlagValues()                         # what `python -m osteojax.main` parses
    config_flags.DEFINE_config_file('config', None, 'Config file.', flag_values=fv,
                                    lock_config=True, sys_argv=argv)
    flags.DEFINE_string('workdir', None, 'Outputs.', flag_values=fv)
    fv(argv)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / 'config.json').write_text(fv.config.to_json_best_effort(indent=1))
    return str(workdir)

  runs = str(tmp_path / 'runs')
  swin_pre, swin_over = t.pretrain_run(runs, 'tp_swav', 'swin3d', 1)
  alice_pre, alice_over = t.pretrain_run(runs, 'alice', 'nnformer3d', 2)
  rows = [('finetune.py', t.finetune_overrides('swin_tpswav_class', 1, swin_pre)),
          ('finetune.py', t.finetune_overrides('tpswav_unified_moe', 0, runs + '/tp_swav_s0')),
          ('finetune.py', t.finetune_overrides('scratch_class', 2, epochs=3)),
          ('tp_swav.py', swin_over), ('alice.py', alice_over)]
  assert rows[0][1]['optim.lr'] == 1e-4 and rows[0][1]['head.moe'] is False
  for i, (config_file, over) in enumerate(rows):
    wd = launch(config_file, over, tmp_path / f'run{i}')
    t.check_reuse(wd, config_file, '', over)
    for other in ({'seed': over['seed'] + 1}, {'optim.lr': 3e-3}):
      with pytest.raises(SystemExit, match='this grid asks'):
        t.check_reuse(wd, config_file, '', {**over, **other})
