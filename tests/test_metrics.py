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


def test_retrieval_by_hand():
  sim = np.array([[0.9, 0.1, 0.3],     # match 0.9 best: rank 1
                  [0.8, 0.5, 0.2],     # 0.8 > 0.5: rank 2
                  [0.7, 0.6, 0.1]])    # two higher: rank 3
  assert metrics.match_ranks(sim).tolist() == [1, 2, 3]
  m = metrics.retrieval_metrics(sim, ks=(1, 2))
  assert m['recall@1'] == 1 / 3 and m['recall@2'] == 2 / 3 and m['mean_rank'] == 2.0
  assert metrics.recall_curve(sim).tolist() == [1 / 3, 2 / 3, 1.0]
  tie = np.array([[0.5, 0.5], [0.0, 1.0]])
  assert metrics.match_ranks(tie).tolist() == [2, 1]      # a tie is not a hit


def test_verification_by_hand():
  # matches 0.9, 0.6; non-matches 0.7, 0.1: pairs ordered 3 of 4 -> AUC 0.75
  sim = np.array([[0.9, 0.7], [0.1, 0.6]])
  v = metrics.verification_metrics(sim)
  assert v['auc'] == 0.75 and v['pairs'] == 4 and v['matches'] == 2
  # ROC points (fpr, tpr): (0,0) (0,.5) [thr .9] (.5,.5) [.7] (.5,1) [.6] (1,1)
  # FNR - FPR: 1, .5, 0 at (0.5, 0.5): EER = 0.5
  assert v['eer'] == 0.5
  assert v['tpr_at_fpr'] == 0.5          # at FPR <= 1%: only the 0.9 match
  perfect = metrics.verification_metrics(np.eye(3) + 0.1)
  assert perfect['auc'] == 1.0 and perfect['eer'] == 0.0 and perfect['tpr_at_fpr'] == 1.0
  import pytest
  with pytest.raises(ValueError, match='square'):
    metrics.retrieval_metrics(np.zeros((2, 3)))
