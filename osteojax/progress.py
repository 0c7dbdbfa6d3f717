"""Progress of long loops: a tqdm bar on a terminal, a plain line every few seconds in a log.

A progress bar written to a file (make run > log) is thousands of carriage-return redraws on
one line; `bar` gives tqdm only when stderr is a terminal and otherwise a `LineProgress` that
prints `[desc] done/total unit (pct), rate, ETA` every `interval` seconds and when it closes.
"""
from __future__ import annotations

import sys
import time

from tqdm import tqdm


class LineProgress:
  """The part of tqdm's interface the project uses: update, set_postfix, close, iteration."""

  def __init__(self, iterable=None, total=None, desc='', unit='it', interval=10.0,
               file=None):
    self.iterable, self.desc, self.unit, self.interval = iterable, desc, unit, interval
    self.total = total if total is not None else (len(iterable) if hasattr(iterable, '__len__')
                                                  else None)
    self.file = file or sys.stderr
    self.n, self.postfix, self.shown = 0, '', 0
    self.t0 = self.t_last = time.time()
    self.closed = False

  def _line(self):
    self.shown = self.n
    dt = max(time.time() - self.t0, 1e-9)
    rate = self.n / dt
    parts = [f'[{self.desc or "progress"}] {self.n}']
    if self.total:
      left = (self.total - self.n) / rate if rate > 0 else float('nan')
      parts = [f'[{self.desc or "progress"}] {self.n}/{self.total} {self.unit} '
               f'({100 * self.n / self.total:.0f}%), {rate:.1f} {self.unit}/s, '
               f'ETA {left / 60:.1f} min']
    else:
      parts.append(f'{self.unit}, {rate:.1f} {self.unit}/s')
    if self.postfix:
      parts.append(self.postfix)
    print(' '.join(parts), file=self.file, flush=True)

  def update(self, n: int = 1):
    self.n += n
    now = time.time()
    if now - self.t_last >= self.interval:
      self.t_last = now
      self._line()

  def set_postfix(self, refresh=True, **kw):
    del refresh
    self.postfix = ', '.join(f'{k}={v}' for k, v in kw.items())

  def close(self):
    if not self.closed and self.n != self.shown:
      self._line()
    self.closed = True

  def __iter__(self):
    for x in self.iterable:
      yield x
      self.update()
    self.close()


def bar(iterable=None, total=None, desc='', unit='it', disable=False, interval=10.0,
        file=None):
  """tqdm on a terminal, LineProgress otherwise, nothing when disable."""
  file = file or sys.stderr
  if disable:
    return tqdm(iterable, total=total, disable=True)
  if getattr(file, 'isatty', lambda: False)():
    return tqdm(iterable, total=total, desc=desc or None, unit=unit, mininterval=0.5,
                file=file)
  return LineProgress(iterable, total, desc, unit, interval, file)
