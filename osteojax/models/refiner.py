"""The refinement regressor: a small CNN + MLP on two almost-aligned feature maps.

Input: the source map, the target map resampled onto the source grid through the current
transform, and the resampling's validity mask, concatenated on channels, [B, h, w, 2C + 1],
optionally followed by their local correlation volume (osteojax.align.refine.make_input).
Output: [B, 3], the small correction (dx, dy, dtheta) in units of the training perturbation's
range (see osteojax.align.refine). BatchNorm is synchronised over the pmap axis when training.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn


class Refiner(nn.Module):
  """Conv stages (3x3 conv, then a strided 3x3 conv, BN + ReLU each), flatten, MLP -> 3."""
  widths: Sequence[int] = (64, 64)
  hidden: int = 128
  axis_name: str | None = 'batch'

  @nn.compact
  def __call__(self, x, train: bool = True):
    norm = lambda name: nn.BatchNorm(use_running_average=not train, momentum=0.9,
                                     axis_name=self.axis_name if train else None, name=name)
    for i, w in enumerate(self.widths):
      x = nn.relu(norm(f'bn{i}a')(nn.Conv(w, (3, 3), use_bias=False, name=f'conv{i}a')(x)))
      x = nn.relu(norm(f'bn{i}b')(nn.Conv(w, (3, 3), (2, 2), use_bias=False,
                                          name=f'conv{i}b')(x)))
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(norm('bn_fc')(nn.Dense(self.hidden, name='fc')(x)))
    return nn.Dense(3, kernel_init=nn.initializers.zeros, name='out')(x)


def refiner_from_config(c) -> Refiner:
  """The regressor of config.model (widths, hidden)."""
  return Refiner(tuple(c.widths), int(c.hidden))

