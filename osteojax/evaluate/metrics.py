"""Binary diagnosis metrics (the paper's ACC, SEN, SPE, F1, AUC) and patient aggregation.

One module for every task: numpy in, plain floats out. AUC comes from scikit-learn.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
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
