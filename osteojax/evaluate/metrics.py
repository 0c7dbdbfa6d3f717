"""Binary diagnosis metrics (the paper's ACC, SEN, SPE, F1, AUC) and patient aggregation.

One module for every task: numpy in, plain floats out. AUC comes from scikit-learn.
Also: the validation threshold rule (Youden's J) and the BMD regression metrics.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats
from sklearn import metrics as skm


def binary_metrics(y, pred) -> dict:
  """ACC, SEN, SPE, F1 (fractions in [0, 1]) of 0/1 predictions. y, pred: [N] ints.

  SEN/SPE/F1 are NaN where their denominator is empty (no positives / no negatives).
  """
  y = np.asarray(y).astype(bool)
  p = np.asarray(pred).astype(bool)
  tp, tn = np.sum(y & p), np.sum(~y & ~p)
  fp, fn = np.sum(~y & p), np.sum(y & ~p)
  div = lambda a, b: float(a) / b if b else float('nan')
  return dict(acc=div(tp + tn, len(y)), sen=div(tp, tp + fn), spe=div(tn, tn + fp),
              f1=div(2 * tp, 2 * tp + fp + fn), n=int(len(y)), positives=int(tp + fn))


def auc(y, score) -> float:
  """ROC AUC; NaN when only one class is present."""
  y = np.asarray(y).astype(int)
  if len(np.unique(y)) < 2:
    return float('nan')
  return float(skm.roc_auc_score(y, score))


def best_f1(y, score) -> tuple[float, float]:
  """(max F1 over thresholds, its threshold): an optimistic ceiling, chosen on the data itself."""
  y = np.asarray(y).astype(int)
  if y.sum() == 0:
    return float('nan'), float('nan')
  prec, rec, thr = skm.precision_recall_curve(y, score)
  f1 = np.where(prec + rec > 0, 2 * prec * rec / np.maximum(prec + rec, 1e-12), 0)[:-1]
  i = int(np.argmax(f1))
  return float(f1[i]), float(thr[i])


def patient_level(patient_ids, y, score) -> tuple[np.ndarray, np.ndarray]:
  """Patient is positive if any vertebra is (paper Sec. 3): label = max, score = max."""
  df = pd.DataFrame(dict(p=patient_ids, y=np.asarray(y), s=np.asarray(score)))
  g = df.groupby('p', sort=True)
  return g.y.max().to_numpy(), g.s.max().to_numpy()


def youden_threshold(y, score) -> float:
  """Decision threshold that maximises Youden's J = SEN + SPE - 1 on (y, score).

  A case is called positive when score >= threshold. Among the distinct scores, the cut with
  the largest J wins (ties: the higher cut, i.e. fewer positives); the threshold returned is
  the midpoint between that cut and the next lower distinct score, so cases scored between
  them are not decided by which side of a single validation score they fall on. It makes the
  same calls as the cut on (y, score) itself. Raises ValueError when y holds one class only.
  """
  y = np.asarray(y).astype(int)
  score = np.asarray(score, np.float64)
  if len(np.unique(y)) < 2:
    raise ValueError(f'need both classes to choose a threshold, got {len(y)} cases of class '
                     f'{np.unique(y).tolist()}')
  if not np.all(np.isfinite(score)):
    raise ValueError('scores must be finite to choose a threshold')
  fpr, tpr, thr = skm.roc_curve(y, score, drop_intermediate=False)
  # thr[0] is +inf (nothing positive); thr[k] for k >= 1 are the distinct scores, descending.
  j = tpr[1:] - fpr[1:]
  k = int(np.flatnonzero(j >= j.max() - 1e-12)[0]) + 1   # float ties: 2/3 vs 1 - 1/3
  if k + 1 < len(thr):
    return float((thr[k] + thr[k + 1]) / 2)
  return float(thr[k])


def f1_threshold(y, score) -> float:
  """Decision threshold that maximises F1 on (y, score), with youden_threshold's conventions.

  Positive when score >= threshold; among the distinct scores the cut with the largest F1 wins
  (ties: the higher cut); the threshold returned is the midpoint to the next lower distinct
  score. Raises ValueError when y holds no positive case.
  """
  y = np.asarray(y).astype(int)
  score = np.asarray(score, np.float64)
  if y.sum() == 0:
    raise ValueError(f'need a positive case to choose an F1 threshold, got {len(y)} negatives')
  if not np.all(np.isfinite(score)):
    raise ValueError('scores must be finite to choose a threshold')
  cuts = np.unique(score)[::-1]                                  # distinct, descending
  order = np.argsort(-score, kind='stable')
  s_sorted, y_sorted = score[order], y[order]
  # positives called at cut c: all cases with score >= c
  n_called = np.searchsorted(-s_sorted, -cuts, side='right')
  tp = np.cumsum(y_sorted)[n_called - 1]
  f1 = 2 * tp / (n_called + y.sum())
  k = int(np.flatnonzero(f1 >= f1.max() - 1e-12)[0])
  if k + 1 < len(cuts):
    return float((cuts[k] + cuts[k + 1]) / 2)
  return float(cuts[k])


def log_loss(y, prob, eps: float = 1e-7) -> float:
  """Mean binary cross-entropy of probabilities prob [N] for labels y [N]."""
  y = np.asarray(y, float)
  p = np.clip(np.asarray(prob, float), eps, 1 - eps)
  return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def regression_metrics(y, yhat) -> dict:
  """MAE, Pearson r and R^2 = 1 - SS_res / SS_tot of predictions yhat of y ([N] floats).

  Pairs with a NaN on either side are dropped; n counts the pairs used. r and R^2 are NaN
  with fewer than 2 pairs or a constant side.
  """
  y = np.asarray(y, np.float64)
  yhat = np.asarray(yhat, np.float64)
  ok = np.isfinite(y) & np.isfinite(yhat)
  y, yhat = y[ok], yhat[ok]
  nan = float('nan')
  if len(y) == 0:
    return dict(mae=nan, r=nan, r2=nan, n=0)
  mae = float(np.mean(np.abs(y - yhat)))
  if len(y) < 2 or np.ptp(y) == 0:
    return dict(mae=mae, r=nan, r2=nan, n=int(len(y)))
  r = nan if np.ptp(yhat) == 0 else float(stats.pearsonr(y, yhat).statistic)
  r2 = float(1 - np.sum((y - yhat) ** 2) / np.sum((y - y.mean()) ** 2))
  return dict(mae=mae, r=r, r2=r2, n=int(len(y)))


# ------------------------------------------------------------------ registration and segmentation
def keypoint_errors_cm(pred, truth, spacing_mm) -> np.ndarray:
  """Keypoint transfer error in cm: |pred - truth| per keypoint.

  pred, truth: [..., K, 2] positions in pixels of one grid (x, y); spacing_mm: its pixel size,
  a scalar or (x, y). Returns [..., K] distances in cm.
  """
  pred = np.asarray(pred, np.float64)
  truth = np.asarray(truth, np.float64)
  if pred.shape != truth.shape or pred.shape[-1] != 2:
    raise ValueError(f'keypoints must be matching [..., K, 2] arrays, got {pred.shape} and '
                     f'{truth.shape}')
  s = np.broadcast_to(np.asarray(spacing_mm, np.float64), (2,))
  if not (s > 0).all():
    raise ValueError(f'spacing must be positive, got {spacing_mm}')
  return np.linalg.norm((pred - truth) * s, axis=-1) / 10.0


def error_summary(errors) -> dict:
  """median, mean, sd (population) and n of an array of errors (NaNs dropped)."""
  e = np.asarray(errors, np.float64).ravel()
  e = e[np.isfinite(e)]
  if not len(e):
    return dict(median=float('nan'), mean=float('nan'), sd=float('nan'), n=0)
  return dict(median=float(np.median(e)), mean=float(e.mean()), sd=float(e.std()), n=int(len(e)))


def dice(pred, truth, labels) -> dict:
  """Dice 2|P & T| / (|P| + |T|) per label of integer masks pred, truth (same shape).

  A label absent from both masks gets NaN (undefined), not 1.
  """
  pred = np.asarray(pred)
  truth = np.asarray(truth)
  if pred.shape != truth.shape:
    raise ValueError(f'masks differ in shape: {pred.shape} and {truth.shape}')
  out = {}
  for lab in labels:
    p, t = pred == lab, truth == lab
    den = int(p.sum()) + int(t.sum())
    out[lab] = 2.0 * float(np.sum(p & t)) / den if den else float('nan')
  return out


# ----------------------------------------------------------------------------------------------
# Retrieval and verification (the DXA-MRI aligner): a square similarity matrix, matches on the
# diagonal.

def match_ranks(sim) -> np.ndarray:
  """1-based rank of the matching column in each row of sim [N, N] (ties count against it:
  rank = 1 + number of other columns scoring >= the match)."""
  s = np.asarray(sim, np.float64)
  if s.ndim != 2 or s.shape[0] != s.shape[1] or s.shape[0] == 0:
    raise ValueError(f'similarity matrix must be square and non-empty, got shape {s.shape}')
  d = np.diag(s)[:, None]
  other = ~np.eye(len(s), dtype=bool)
  return 1 + np.sum((s >= d) & other, axis=1)


def retrieval_metrics(sim, ks=(1, 5, 10)) -> dict:
  """Recall@K (fractions) and mean / median 1-based rank, each row a query. sim: [N, N]."""
  r = match_ranks(sim)
  out = {f'recall@{k}': float(np.mean(r <= k)) for k in ks}
  out.update(mean_rank=float(r.mean()), median_rank=float(np.median(r)), n=int(len(r)))
  return out


def recall_curve(sim, max_k: int | None = None) -> np.ndarray:
  """Recall@K for K = 1..max_k (default N). sim: [N, N] -> [max_k]."""
  r = match_ranks(sim)
  k = np.arange(1, (max_k or len(r)) + 1)
  return (r[None, :] <= k[:, None]).mean(1)


def verification_metrics(sim, fpr_at: float = 0.01) -> dict:
  """All N^2 pairs of sim [N, N] scored as match / non-match: ROC AUC, EER and TPR at FPR.

  EER is where FPR = 1 - TPR, linearly interpolated between ROC points; TPR@FPR is the highest
  TPR whose FPR does not exceed `fpr_at` (the ROC as a step function).
  """
  s = np.asarray(sim, np.float64)
  match_ranks(s)   # shape check
  y = np.eye(len(s), dtype=int).ravel()
  if len(s) < 2:
    raise ValueError('verification needs at least 2 pairs (some non-matching pairs)')
  fpr, tpr, _ = skm.roc_curve(y, s.ravel())
  fnr = 1 - tpr
  i = int(np.argmax(fnr <= fpr))          # first ROC point with FNR <= FPR (fnr falls, fpr rises)
  if i == 0:
    eer = float(fpr[0])
  else:
    d0, d1 = fnr[i - 1] - fpr[i - 1], fnr[i] - fpr[i]
    w = d0 / (d0 - d1) if d0 != d1 else 0.0
    eer = float(fpr[i - 1] + w * (fpr[i] - fpr[i - 1]))
  return dict(auc=float(skm.roc_auc_score(y, s.ravel())), eer=eer,
              tpr_at_fpr=float(tpr[fpr <= fpr_at + 1e-12].max()), fpr_at=fpr_at,
              pairs=int(y.size), matches=int(y.sum()))
