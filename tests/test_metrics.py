"""Metrics on tiny cases computed by hand."""
import numpy as np

from osteojax.evaluate import metrics


def test_binary_metrics_by_hand():
  y = [1, 1, 1, 0, 0, 0, 0, 0]
  p = [1, 1, 0, 1, 0, 0, 0, 0]
  m = metrics.binary_metrics(y, p)
  # tp=2 fn=1 fp=1 tn=4
  assert m['acc'] == 6 / 8 and m['sen'] == 2 / 3 and m['spe'] == 4 / 5
  assert m['f1'] == 4 / 6 and m['n'] == 8 and m['positives'] == 3
  assert np.isnan(metrics.binary_metrics([0, 0], [0, 1])['sen'])


def test_auc_and_best_f1_by_hand():
  y = [0, 0, 1, 1]
  s = [0.1, 0.4, 0.35, 0.8]
  assert metrics.auc(y, s) == 0.75           # 3 of 4 (pos, neg) pairs ordered
  f1, thr = metrics.best_f1(y, s)
  assert f1 == 0.8 and thr == 0.35           # threshold 0.35: tp=2 fp=1 fn=0
  assert np.isnan(metrics.auc([1, 1], [0.2, 0.3]))


def test_patient_level_any_vertebra():
  y, s = metrics.patient_level(['a', 'a', 'b', 'c'], [0, 1, 0, 0], [0.2, 0.9, 0.4, 0.1])
  assert y.tolist() == [1, 0, 0] and s.tolist() == [0.9, 0.4, 0.1]
