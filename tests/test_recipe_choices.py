"""tools/recipe_choices.py --report-only: tabulates finished runs by hand-checkable rules and
trains nothing."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fake_run(wd, aucs, r2s):
  os.makedirs(wd)
  entries = [dict(step=31 * (i + 1), auc_t=a, auc=a, bmd_r2=r, bmd_mae=0.1 - 0.01 * i,
                  loss_class=0.5) for i, (a, r) in enumerate(zip(aucs, r2s))]
  with open(os.path.join(wd, 'validation.json'), 'w', encoding='utf-8') as f:
    json.dump(dict(entries=entries, best_step=31), f)
  with open(os.path.join(wd, 'config.json'), 'w', encoding='utf-8') as f:
    json.dump(dict(eval_every_epochs=1), f)
  with open(os.path.join(wd, 'predictions.csv'), 'w', encoding='utf-8') as f:
    f.write('split,device,bmd,bmd_pred\nvalid,hologic,1.0,1.1\nvalid,ge_lunar,1.0,0.9\n'
            'valid,medix,1.0,1.0\ntest,hologic,1.0,9.0\n')


def test_report_only_tabulates_finished_runs(tmp_path):
  out = tmp_path / 'round'
  # epoch kept by auc_t + bmd_r2: the second (0.80 + 0.60 > 0.85 + 0.40 > 0.70 + 0.50)
  _fake_run(out / 'default_s0', [0.70, 0.80, 0.85], [0.50, 0.60, 0.40])
  _fake_run(out / 'shift2_s1', [0.90, 0.60], [0.10, 0.20])
  r = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'recipe_choices.py'),
                      '--round', 'spatial', '--seeds', '0', '1', '--out', str(out),
                      '--report-only'], capture_output=True, encoding='utf-8', errors='replace',
                     cwd=ROOT,
                     env=dict(os.environ, PYTHONPATH=ROOT), timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  rows = {l.split(' | ')[0].strip('| '): l.split(' | ')
          for l in (out / 'recipe.md').read_text(encoding='utf-8').splitlines()[2:]}
  assert set(rows) == {'default', 'shift2'}           # shift4 has no finished run
  d = rows['default']
  assert d[2:8] == ['t', '1', '0.800', '0.825', '2 of 3', '0.090']   # late half: epochs 2-3
  assert d[8].strip(' |') == '+0.100 / -0.100 / +0.000'            # validation rows only
  assert rows['shift2'][2:7] == ['t', '1', '0.900', '0.600', '1 of 2']
  assert sorted(os.listdir(out)) == ['default_s0', 'recipe.json', 'recipe.md', 'shift2_s1',
                                     'validation_curves.png']
  assert (out / 'validation_curves.png').stat().st_size > 1000
