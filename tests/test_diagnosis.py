"""Per-site evaluation of predictions tables: thresholds, metrics and patients by hand."""
import json

import numpy as np
import pandas as pd
import pytest

from osteojax.data.io import OsteoDataError
from osteojax.evaluate import diagnosis

nan = float('nan')


def _table():
  """Validation at site A; test at A (3 patients) and D (1 patient). Values chosen by hand."""
  rows = [  # roi_id, patient, site, split, label, prob, bmd, bmd_pred
      ('v1', 'pv1', 'A', 'valid', 0, 0.1, 0.9, 1.0),
      ('v2', 'pv2', 'A', 'valid', 0, 0.3, 0.9, 1.0),
      ('v3', 'pv3', 'A', 'valid', 1, 0.6, 0.6, 0.7),
      ('v4', 'pv3', 'A', 'valid', 1, 0.8, 0.6, 0.7),
      ('t1', 'p1', 'A', 'test', 1, 0.7, 0.60, 0.70),
      ('t2', 'p1', 'A', 'test', 0, 0.2, 0.80, 0.80),
      ('t3', 'p2', 'A', 'test', 0, 0.5, 0.90, 0.60),
      ('t4', 'p2', 'A', 'test', 0, 0.1, 1.00, 1.10),
      ('t5', 'p3', 'A', 'test', 1, 0.4, 0.70, 0.70),
      ('t6', 'p4', 'D', 'test', 0, 0.3, 0.90, nan),
      ('t7', 'p4', 'D', 'test', 1, 0.9, 0.65, nan),
  ]
  df = pd.DataFrame(rows, columns=['roi_id', 'patient_id', 'site', 'split', 'label', 'prob',
                                   'bmd', 'bmd_pred'])
  df['device'] = df.site.map({'A': 'hologic', 'D': 'hologic'})
  df['level'] = 'L1'
  return df


def _row(ev, level, site):
  r = ev[(ev.level == level) & (ev.site == site)]
  assert len(r) == 1
  return r.iloc[0]


def test_threshold_from_validation_only():
  df = _table()
  # valid: y 0 0 1 1, prob .1 .3 .6 .8 -> J = 1 at >= .6; midpoint to .3 -> .45
  assert diagnosis.thresholds(df)['vertebra'] == pytest.approx(0.45)
  assert diagnosis.thresholds(df)['patient'] == pytest.approx(0.45)
  # Test scores do not move it.
  df2 = df.copy()
  df2.loc[df2.split == 'test', 'prob'] = 1 - df2.loc[df2.split == 'test', 'prob']
  assert diagnosis.thresholds(df2)['vertebra'] == pytest.approx(0.45)


def test_site_metrics_by_hand():
  ev = diagnosis.evaluate(_table())
  a = _row(ev, 'vertebra', 'A')
  # A test: y 1 0 0 0 1, prob .7 .2 .5 .1 .4, t = .45 -> calls 1 0 1 0 0: tp 1 fn 1 fp 1 tn 2
  assert (a.acc, a.sen, a.spe, a.f1) == pytest.approx((3 / 5, 1 / 2, 2 / 3, 1 / 2))
  assert a.auc == pytest.approx(5 / 6)       # .7 beats 3 negatives, .4 beats 2 of 3
  assert (a.n, a.positives) == (5, 2)
  # BMD at A: errors .1 0 .3 .1 0 -> MAE .1
  assert a.bmd_mae == pytest.approx(0.1) and a.bmd_n == 5
  p = _row(ev, 'patient', 'A')
  # p1 (y 1, max .7) called 1; p2 (y 0, max .5) called 1; p3 (y 1, .4) called 0
  assert (p.acc, p.sen, p.spe, p.f1) == pytest.approx((1 / 3, 1 / 2, 0.0, 1 / 2))
  assert p.auc == pytest.approx(1 / 2) and p.n == 3
  d = _row(ev, 'vertebra', 'D')
  assert (d.acc, d.sen, d.spe, d.auc) == (1.0, 1.0, 1.0, 1.0)
  assert np.isnan(d.bmd_mae) and d.bmd_n == 0
  alls = _row(ev, 'patient', 'all')
  assert alls.n == 4 and alls.acc == pytest.approx(2 / 4)
  assert _row(ev, 'vertebra', 'internal').n == 5
  assert set(ev.site) == {'A', 'D', 'internal', 'all'}     # B, C have no rows here


def test_fixed_threshold_and_patient_score():
  df = _table()
  df['threshold'] = 0.35
  ev = diagnosis.evaluate(df)
  a = _row(ev, 'vertebra', 'A')
  # t = .35: calls 1 0 1 0 1 -> tp 2 fp 1 tn 2
  assert (a.acc, a.sen, a.spe) == pytest.approx((4 / 5, 1.0, 2 / 3)) and a.threshold == 0.35
  df = _table()
  # Patient scores: validation pv1 .2 (0), pv2 .4 (0), pv3 .9 (1) -> cut >= .9, midpoint .65
  df['patient_score'] = df.patient_id.map({'pv1': .2, 'pv2': .4, 'pv3': .9, 'p1': .3,
                                           'p2': .1, 'p3': .7, 'p4': .8})
  thr = diagnosis.thresholds(df)
  assert thr['vertebra'] == pytest.approx(0.45) and thr['patient'] == pytest.approx(0.65)
  p = _row(diagnosis.evaluate(df), 'patient', 'A')
  # p1 (1) .3 -> 0; p2 (0) .1 -> 0; p3 (1) .7 -> 1
  assert (p.acc, p.sen, p.spe) == pytest.approx((2 / 3, 1 / 2, 1.0))


def test_aggregate_mean_and_sd_over_seeds():
  a, b = _table(), _table()
  b.loc[b.roi_id == 't5', 'prob'] = 0.6      # seed 2 calls t5 right: A vertebra acc 4/5
  agg = diagnosis.aggregate([diagnosis.evaluate(a), diagnosis.evaluate(b)])
  r = agg[(agg.level == 'vertebra') & (agg.site == 'A')].iloc[0]
  assert r.acc == pytest.approx(0.7) and r.acc_sd == pytest.approx(np.std([.6, .8], ddof=1))
  assert r.n_seeds == 2
  one = diagnosis.aggregate([diagnosis.evaluate(a)])
  assert np.isnan(one.acc_sd).all()


def test_compact_table_one_metric_per_site():
  a, b = _table(), _table()
  b.loc[b.roi_id == 't5', 'prob'] = 0.6      # as above: site A vertebra ACC 60 % and 80 %
  summary = diagnosis.summarize({'m': [a, b], 'one': a})
  lines = diagnosis.compact_table(summary, 'acc', 'vertebra', ('A', 'D')).splitlines()
  assert lines[0] == '| model | seeds | A | D |'
  m = lines[2].split(' | ')
  assert m[0] == '| m' and m[1] == '2' and m[2].startswith('70.0 ± 14.1')
  assert lines[3].split(' | ')[2].startswith('60.0')


def test_paper_table_rows_stars_and_missing_rows():
  def model(n, f1, sd):
    return {'n_seeds': n, 'mean_sd': [
        {'level': 'vertebra', 'site': 'A', 'f1': f1, 'f1_sd': sd},
        {'level': 'vertebra', 'site': 'internal', 'auc': 0.9, 'auc_sd': sd}]}
  summary = {'base': 'b', 'models': {'b': model(3, 0.8, 0.01), 'm': model(3, 0.5, 0.02),
                                     'one': model(1, 0.6, None), 'rule': model(1, 0.4, None)},
             'significance': {k: [{'level': 'vertebra', 'site': 'A', 'ttest_f1_p': p}]
                              for k, p in (('m', 0.004), ('one', None), ('rule', 0.03))}}
  rows = [('m', 'M', '/', 'class'), ('gone', 'G', 'X', 'class'), ('one', 'O', '/', 'class'),
          ('rule', 'R', '-', '-'), ('b', 'B', 'TP', 'unified')]
  lines = diagnosis.paper_table(summary, rows, 'vertebra', sites=('A',)).splitlines()
  assert lines[0] == '| model | pre-training | loss | seeds | F1 A | AUC internal |'
  assert lines[2] == '| M | / | class | 3 | 50.0 ± 2.0 ** | 0.900 ± 0.020 |'
  assert lines[3] == '| G | X | class | 0 | - | - |'          # not run: kept, empty
  assert lines[4] == '| O | / | class | 1 | 60.0 | 0.900 |'    # no p (summarize gives none)
  assert lines[5] == '| R | - | - | 1 | 40.0 * | 0.900 |'     # a baseline: tested
  assert lines[6] == '| B | TP | unified | 3 | 80.0 ± 1.0 (base) | 0.900 ± 0.010 |'


@pytest.mark.parametrize('edit, message', [
    (lambda d: d.drop(columns='bmd_pred'), 'missing columns'),
    (lambda d: pd.concat([d, d.iloc[:1]]), 'duplicated roi_id'),
    (lambda d: d.assign(split=d.split.replace('valid', 'train')), 'split must be one of'),
    (lambda d: d.assign(label=d.label.replace(1, 2)), 'label must be 0 or 1'),
    (lambda d: d.assign(prob=d.prob.where(d.roi_id != 't1', nan)), 'prob must be a finite'),
    (lambda d: d.assign(site=d.site.replace('D', 'E')), 'site must be one of'),
])
def test_bad_tables_one_line_errors(edit, message):
  with pytest.raises(OsteoDataError, match=message) as e:
    diagnosis.evaluate(edit(_table()))
  assert '\n' not in str(e.value)


def test_validation_without_both_classes():
  df = _table()
  df = df[~((df.split == 'valid') & (df.label == 1))]
  thr = diagnosis.thresholds(df)                 # a probability: cut at 0.5, and said so
  assert thr['vertebra'] == 0.5 and thr['rule'] == diagnosis.FALLBACK_RULE
  a = diagnosis.evaluate(df)
  assert a[(a.level == 'vertebra') & (a.site == 'A')].iloc[0].sen == 0.5   # .7 yes, .4 no
  with pytest.raises(OsteoDataError, match='validation split: need both classes'):
    diagnosis.evaluate(df.assign(score=df.prob * 10))   # not a probability: no threshold


def test_read_predictions_round_trip_and_errors(tmp_path):
  path = str(tmp_path / 'p.csv')
  diagnosis.write_predictions(_table(), path)
  back = diagnosis.read_predictions(path)
  pd.testing.assert_frame_equal(diagnosis.evaluate(back), diagnosis.evaluate(_table()))
  with pytest.raises(OsteoDataError, match='no such file'):
    diagnosis.read_predictions(str(tmp_path / 'missing.csv'))
  (tmp_path / 'bad.csv').write_text('roi_id,prob\nx,1\n')
  with pytest.raises(OsteoDataError, match='missing columns'):
    diagnosis.read_predictions(str(tmp_path / 'bad.csv'))


def test_write_report_tables_json_and_figures(tmp_path):
  a1, a2 = _table(), _table()
  a2.loc[a2.roi_id == 't5', 'prob'] = 0.6
  b = _table().assign(prob=lambda d: np.where(d.split == 'test', 0.5 + 0.1 * d.label, d.prob))
  summary = diagnosis.write_report({'model': [a1, a2], 'flat': [b, b]}, str(tmp_path),
                                   base='model')
  for f in ('results.json', 'results.md', 'roc_vertebra.png', 'roc_patient.png'):
    assert (tmp_path / f).stat().st_size > 0
  with open(tmp_path / 'results.json', encoding='utf-8') as f:
    back = json.load(f)
  assert back['models']['model']['n_seeds'] == 2 and back['base'] == 'model'
  md = (tmp_path / 'results.md').read_text(encoding='utf-8')
  assert '| A | model | 2 | 70.0 ± 14.1 |' in md            # A vertebra ACC of the two seeds
  assert 'base' in md and 'BMD' in md
  rows = {(r['level'], r['site']): r for r in summary['significance']['flat']}
  assert set(rows) >= {('vertebra', 'A'), ('patient', 'D')}
