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
