"""3-D ResNet encoders (basic blocks) in Flax: ResNet34-3D and a slim variant for CPU runs.

Normalisation is BatchNorm synchronised over the pmap axis (`axis_name`), so statistics are
those of the global batch and 1 device and N devices compute the same thing. Outside pmap
(evaluation, probes) pass `train=False`: running averages are used and no axis is needed.

Convolutions are Conv3D, nn.Conv's parameters computed the fastest way for the backend: XLA's
convolution on GPU/TPU, one matrix product (im2col; space-to-depth for the stem) on CPU, where
it makes the slim model's TP-SwAV step ~3x faster (tools/bench_train_step.py).
"""
from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from osteojax.errors import ConfigError

_DN = ('NDHWC', 'DHWIO', 'NDHWC')
CONV_IMPLS = ('auto', 'lax', 'im2col')


def _same_pads(d: int, k: int, s: int):
  """lax's 'SAME' padding of one axis (the low side gets the smaller half) and output size."""
  out = -(-d // s)
  total = max((out - 1) * s + k - d, 0)
  return total // 2, total - total // 2, out


def _pads(d: int, k: int, s: int, padding: int | None):
  """(low, high, output size) of one axis: 'SAME' (padding None) or `padding` zeros on both
  sides (PyTorch's Conv3d(padding=p): output (d + 2p - k) // s + 1)."""
  if padding is None:
    return _same_pads(d, k, s)
  return padding, padding, (d + 2 * padding - k) // s + 1


def conv3d_im2col(x, kernel, stride: int, padding: int | None = None):
  """nn.Conv's 'SAME' convolution (or one padded by `padding` zeros on both sides, _pads) as
  one matrix product: the k^3 (strided) shifted views of the padded input side by side
  [B, D', H', W', k^3 C] times the kernel [k^3 C, F]. The views are built one axis at a time
  (k shifts along W, then H, then D: 3k slices, not k^3), which keeps the program, and its
  compile time, small. The gradients are matrix products and slices too."""
  k, s = kernel.shape[0], stride
  pads = [_pads(d, k, s, padding) for d in x.shape[1:4]]   # (low, high, output size) per axis
  x = jnp.pad(x, ((0, 0), *[(lo, hi) for lo, hi, _ in pads], (0, 0)))
  for axis in (3, 2, 1):           # W, H, D: the last stacked varies slowest in the channels
    n = (pads[axis - 1][2] - 1) * s + 1
    views = [lax.slice_in_dim(x, i, i + n, s, axis) for i in range(k)]
    x = views[0] if k == 1 else jnp.concatenate(views, axis=-1)
  return x @ kernel.reshape(-1, kernel.shape[-1])


def conv3d_s2d(x, kernel, stride: int, padding: int | None = None):
  """nn.Conv's 'SAME' strided convolution (or one padded by `padding`, _pads) as a stride-1
  'VALID' convolution on the space-to-depth input: the kernel is zero-padded to a multiple of
  the stride and its taps folded into input channels. For the stem (1 channel, 7^3) this keeps
  the input s^3 channels wide where im2col would make it k^3."""
  k, s = kernel.shape[0], stride
  b, c = x.shape[0], x.shape[-1]
  k2, pads, n = -(-k // s) * s, [], []
  for d in x.shape[1:4]:
    lo, _, out = _pads(d, k, s, padding)
    pads.append((lo, (out - 1) * s + k2 - d - lo, 0))   # padded length (out - 1) * s + k2
    n.append(((out - 1) * s + k2) // s)
  # lax.pad: a negative high pad (possible with an explicit padding) drops unused voxels
  xp = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), *pads, (0, 0, 0)))
  xs = xp.reshape(b, n[0], s, n[1], s, n[2], s, c).transpose(0, 1, 3, 5, 2, 4, 6, 7)
  xs = xs.reshape(b, *n, s ** 3 * c)
  q = k2 // s
  w = jnp.pad(kernel, ((0, k2 - k),) * 3 + ((0, 0), (0, 0)))
  w = w.reshape(q, s, q, s, q, s, c, -1).transpose(0, 2, 4, 1, 3, 5, 6, 7)
  w = w.reshape(q, q, q, s ** 3 * c, -1)
  return lax.conv_general_dilated(xs, w, (1, 1, 1), 'VALID', dimension_numbers=_DN)


def max_pool_separable(x, k: int = 3, stride: int = 2):
  """nn.max_pool(x, (k,) * 3, (stride,) * 3, 'SAME') as three 1-D max-pools (max is
  separable): the same values; its gradient is jnp.maximum's, which differs from XLA's
  select-and-scatter only where a window holds tied maxima (after a ReLU, windows of zeros,
  whose gradient the ReLU stops either way). Several times faster than select-and-scatter on
  CPU."""
  for axis in (1, 2, 3):
    lo, hi, out = _same_pads(x.shape[axis], k, stride)
    pad = [(0, 0)] * x.ndim
    pad[axis] = (lo, hi)
    x = jnp.pad(x, pad, constant_values=-jnp.inf)
    n = (out - 1) * stride + 1
    views = [lax.slice_in_dim(x, i, i + n, stride, axis) for i in range(k)]
    x = functools.reduce(jnp.maximum, views)
  return x


def resolve_impl(impl: str) -> str:
  """'auto' -> 'im2col' on CPU, 'lax' on accelerators; checks the name."""
  if impl not in CONV_IMPLS:
    raise ConfigError(f'unknown conv impl {impl!r} (known: {", ".join(CONV_IMPLS)})')
  if impl == 'auto':
    return 'im2col' if jax.default_backend() == 'cpu' else 'lax'
  return impl


class Conv3D(nn.Module):
  """nn.Conv(features, (k, k, k), stride, 'SAME', use_bias=False) with the same parameter
  ('kernel', same shape and initialiser: checkpoints load either way), computed the way the
  backend runs fastest. impl 'lax': lax's convolution; 'im2col': conv3d_im2col, or conv3d_s2d
  for a strided convolution of a narrow input (the stem); 'auto': im2col on CPU, lax on
  accelerators (resolve_impl). XLA's CPU convolutions of these small 3-D maps are slow, their
  strided gradients most of all; the forms above compute the same sums in another order (equal
  to float rounding; tested), and tools/bench_train_step.py --conv lax im2col measures both.
  ResNet3D's stem max-pool follows the same choice (max_pool_separable on 'im2col').
  padding: None is 'SAME'; an int p pads p zeros on both sides of each axis, as PyTorch's
  Conv3d(padding=p) (nnFormer's strided convolutions: for an even size, 'SAME' would centre
  the output voxel i on input 2i + 1, padding 1 centres it on 2i)."""
  features: int
  kernel_size: int = 3
  stride: int = 1
  impl: str = 'auto'
  padding: int | None = None

  @nn.compact
  def __call__(self, x):
    kernel = self.param('kernel', nn.initializers.lecun_normal(),
                        (self.kernel_size,) * 3 + (x.shape[-1], self.features))
    kernel = kernel.astype(x.dtype)
    if resolve_impl(self.impl) == 'lax':
      pad = 'SAME' if self.padding is None else [(self.padding, self.padding)] * 3
      return lax.conv_general_dilated(x, kernel, (self.stride,) * 3, pad,
                                      dimension_numbers=_DN)
    if self.stride > 1 and x.shape[-1] * self.stride ** 3 < self.kernel_size ** 3:
      return conv3d_s2d(x, kernel, self.stride, self.padding)
    return conv3d_im2col(x, kernel, self.stride, self.padding)


class BasicBlock3D(nn.Module):
  """Two 3x3x3 convolutions with a residual connection. x: [B, D, H, W, C]."""
  features: int
  strides: int = 1
  axis_name: str | None = None
  zero_init_residual: bool = False
  conv: str = 'auto'

  @nn.compact
  def __call__(self, x, train: bool):
    norm = lambda name, **kw: nn.BatchNorm(use_running_average=not train, momentum=0.9,
                                           axis_name=self.axis_name if train else None,
                                           name=name, **kw)
    s = (self.strides,) * 3
    y = Conv3D(self.features, 3, self.strides, self.conv, name='conv1')(x)
    y = nn.relu(norm('bn1')(y))
    y = Conv3D(self.features, 3, 1, self.conv, name='conv2')(y)
    # zero_init_residual (Goyal et al. 2017): the branch starts as zero, each block as identity.
    y = norm('bn2', scale_init=(nn.initializers.zeros if self.zero_init_residual
                                else nn.initializers.ones))(y)
    if x.shape[-1] != self.features or self.strides != 1:
      # ResNet-D shortcut: average-pool, then 1^3 conv. A strided 1^3 conv would see only
      # every other voxel (on a 2^3 map just the corner, which is background for every ROI).
      if self.strides != 1:
        x = nn.avg_pool(x, s, s, padding='SAME')
      x = Conv3D(self.features, 1, 1, self.conv, name='proj')(x)
      x = norm('bn_proj')(x)
    return nn.relu(x + y)


class ResNet3D(nn.Module):
  """ResNet encoder: [B, D, H, W, C] -> pooled features [B, widths[-1]].

  stage_sizes (3, 4, 6, 3) with widths (64, 128, 256, 512) is ResNet34-3D (63M parameters);
  the slim CPU variant keeps the depth with widths (16, 32, 64, 128).
  """
  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  widths: Sequence[int] = (64, 128, 256, 512)
  stem_stride: int = 2
  stem_pool: bool = True
  axis_name: str | None = 'batch'
  zero_init_residual: bool = False
  conv: str = 'auto'          # Conv3D impl: 'auto' | 'lax' | 'im2col'

  @nn.compact
  def __call__(self, x, train: bool = True):
    # Stem as in ResNet: strided 7^3 convolution and a 3^3/2 max-pool (4x down-sampling).
    x = Conv3D(self.widths[0], 7, self.stem_stride, self.conv, name='stem')(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                     axis_name=self.axis_name if train else None, name='stem_bn')(x)
    x = nn.relu(x)
    if self.stem_pool and resolve_impl(self.conv) == 'lax':
      x = nn.max_pool(x, (3, 3, 3), (2, 2, 2), padding='SAME')
    elif self.stem_pool:
      x = max_pool_separable(x, 3, 2)
    for i, (n, w) in enumerate(zip(self.stage_sizes, self.widths)):
      for j in range(n):
        x = BasicBlock3D(w, 2 if (j == 0 and i > 0) else 1, self.axis_name,
                         self.zero_init_residual, self.conv,
                         name=f'stage{i + 1}_block{j + 1}')(x, train)
    return jnp.mean(x, axis=(1, 2, 3))


def encoder_from_config(c) -> ResNet3D:
  """The encoder named by config.model (name, stage_sizes, widths, stem_stride, stem_pool,
  zero_init_residual: True in configs saved before it was a setting; conv: Conv3D's impl,
  'auto' when absent)."""
  return ResNet3D(tuple(c.stage_sizes), tuple(c.widths), c.stem_stride, c.stem_pool,
                  zero_init_residual=c.get('zero_init_residual', True),
                  conv=c.get('conv', 'auto'))
