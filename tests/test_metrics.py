"""Metrics on tiny cases computed by hand."""
import numpy as np
import pytest

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


def test_youden_threshold_by_hand():
  y = [0, 0, 1, 0, 1, 1]
  s = [1, 2, 3, 4, 5, 6]
  # cut >= 6: J = 1/3; >= 5: 2/3 - 0; >= 4: 2/3 - 1/3; >= 3: 1 - 1/3; >= 2: 1 - 2/3; >= 1: 0.
  # Best J = 2/3 at >= 5 and >= 3; the higher cut wins, midpoint to the next score 4.
  assert metrics.youden_threshold(y, s) == 4.5
  # >= 3: J = 1/2; >= 2: J = 1 (wins); >= 1: J = 0. Midpoint of 2 and 1.
  assert metrics.youden_threshold([1, 1, 0], [3, 2, 1]) == 1.5
  assert metrics.youden_threshold([0, 1], [1, 1]) == 1.0       # one distinct score: itself
  assert metrics.youden_threshold([0, 1], [2, 1]) == 1.0       # J = 0 everywhere: top cut
  with pytest.raises(ValueError, match='both classes'):
    metrics.youden_threshold([1, 1], [0.2, 0.3])


def test_regression_metrics_by_hand():
  y = [1.0, 2.0, 3.0, float('nan')]
  yhat = [1.0, 2.0, 5.0, 9.0]
  m = metrics.regression_metrics(y, yhat)
  # residuals 0, 0, -2 -> MAE 2/3; SS_res 4, SS_tot 2 -> R^2 = -1
  assert m['n'] == 3 and np.isclose(m['mae'], 2 / 3) and np.isclose(m['r2'], -1.0)
  # r of (1, 2, 3) and (1, 2, 5): cov = 2, sd products sqrt(1 * 13/3 * ...) by the definition
  a, b = np.array([1, 2, 3.]), np.array([1, 2, 5.])
  r = np.sum((a - a.mean()) * (b - b.mean())) / np.sqrt(np.sum((a - a.mean()) ** 2)
                                                        * np.sum((b - b.mean()) ** 2))
  assert np.isclose(m['r'], r)
  assert np.isnan(metrics.regression_metrics([1.0], [2.0])['r'])
  assert metrics.regression_metrics([np.nan], [1.0])['n'] == 0


def test_keypoint_errors_cm_by_hand():
  pred = np.array([[0.0, 0.0], [3.0, 4.0]])
  truth = np.array([[0.0, 0.0], [0.0, 0.0]])
  # (3, 4) px at 2 mm = (6, 8) mm -> 10 mm = 1 cm
  np.testing.assert_allclose(metrics.keypoint_errors_cm(pred, truth, 2.0), [0.0, 1.0])
  # anisotropic: (3 px * 1 mm, 4 px * 2 mm) = (3, 8) mm
  np.testing.assert_allclose(metrics.keypoint_errors_cm(pred, truth, (1.0, 2.0)),
                             [0.0, np.sqrt(73) / 10])
  s = metrics.error_summary([1.0, 2.0, 6.0, np.nan])
  assert s == dict(median=2.0, mean=3.0, sd=float(np.std([1.0, 2.0, 6.0])), n=3)


def test_dice_by_hand():
  truth = np.array([[0, 1, 1],
                    [0, 2, 2],
                    [3, 3, 0]])
  pred = np.array([[1, 1, 0],
                   [0, 2, 0],
                   [0, 0, 0]])
  d = metrics.dice(pred, truth, [1, 2, 3, 4])
  # label 1: |P|=2 |T|=2 overlap 1 -> 0.5; label 2: |P|=1 |T|=2 overlap 1 -> 2/3;
  # label 3: |P|=0 |T|=2 -> 0; label 4 in neither -> NaN
  assert d[1] == 0.5 and d[2] == 2 / 3 and d[3] == 0.0 and np.isnan(d[4])


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


def test_f1_threshold_by_hand_and_against_brute_force():
  y = [0, 0, 1, 0, 1, 1]
  s = [1, 2, 3, 4, 5, 6]
  # cut >= 6: F1 = 2/4; >= 5: 4/5; >= 4: 4/6; >= 3: 6/7 (best); >= 2: 6/8; >= 1: 6/9.
  assert metrics.f1_threshold(y, s) == 2.5                     # midpoint of 3 and 2
  rng = np.random.default_rng(0)
  for _ in range(50):
    yy = rng.integers(0, 2, 25)
    yy[0] = 1
    ss = np.round(rng.normal(size=25) + yy, 1)
    t = metrics.f1_threshold(yy, ss)
    best = max(metrics.binary_metrics(yy, ss >= c)['f1'] for c in np.unique(ss))
    assert metrics.binary_metrics(yy, ss >= t)['f1'] == pytest.approx(best)
  with pytest.raises(ValueError, match='positive case'):
    metrics.f1_threshold([0, 0], [0.2, 0.3])


def test_log_loss_by_hand():
  assert metrics.log_loss([1, 0], [0.8, 0.4]) == pytest.approx(-(np.log(0.8) + np.log(0.6)) / 2)


def test_progress_in_a_log_is_lines_not_redraws(capsys):
  import io as _io
  from osteojax import progress
  buf = _io.StringIO()                       # not a terminal
  b = progress.bar(total=4, desc='work', unit='roi', interval=0.0, file=buf)
  for _ in range(4):
    b.update()
  b.close()
  lines = buf.getvalue().splitlines()
  assert '\r' not in buf.getvalue() and len(lines) == 4
  assert lines[-1].startswith('[work] 4/4 roi (100%)')
