"""Metric writer: console logging + TensorBoard event files, without TensorFlow.

(clu's metric writers import TensorFlow at package import; the `tensorboard` package alone
writes the same event files, so `tensorboard --logdir runs` shows every run.)
"""
from __future__ import annotations

import logging
import time

import jax
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter


class MetricWriter:
  """write_scalars(step, {name: value}) to the log and, on the first host, to TensorBoard."""

  def __init__(self, logdir: str | None):
    self._tb = EventFileWriter(logdir) if logdir and jax.process_index() == 0 else None

  def write_scalars(self, step: int, scalars: dict):
    logging.info('step %d: %s', step, ', '.join(f'{k}={float(v):.5g}' for k, v in scalars.items()))
    if self._tb is not None:
      s = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=k, simple_value=float(v))
                                     for k, v in scalars.items()])
      self._tb.add_event(event_pb2.Event(wall_time=time.time(), step=int(step), summary=s))

  def flush(self):
    if self._tb is not None:
      self._tb.flush()

  def close(self):
    if self._tb is not None:
      self._tb.close()


def create_writer(workdir: str) -> MetricWriter:
  return MetricWriter(workdir)
