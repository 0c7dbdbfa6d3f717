"""All-pairs correlation of spatial feature maps: similarity = max over translations.

For DXA map a_i [H, W, C] and MRI map b_j [h, w, C] (h <= H, w <= W) the correlation at a
translation (dy, dx) is

    corr[i, j, dy, dx] = sum_{y < h, x < w, c} a_i[y + dy, x + dx, c] * b_j[y, x, c] / (h * w)

and the similarity M[i, j] = max_{dy, dx} corr[i, j, dy, dx]. With unit-norm feature vectors at
every location, corr lies in [-1, 1].

Translation range: the *valid* placements, 0 <= dy <= H - h and 0 <= dx <= W - w, i.e. the whole
MRI map lies inside the DXA map. This is the range of the authors' public code (an unpadded
convolution divided by h * w) and it fits the acquisition: the MRI field of view (neck to knee)
is a crop of the DXA's (head to toe), so at the true alignment the MRI map lies inside the DXA
map; partial overlaps would be scored on fewer locations than h * w and need their own
normalisation.

Because only valid placements are kept, zero-padding the MRI map to the DXA size (H, W) (or
any larger size; we round up to fast FFT lengths) is enough: the circular correlation of size (H, W) wraps only for translations outside the valid
range, which are cropped away. All N x M correlations of a batch then cost one rfft2 per map, a
channel contraction per frequency (a batched matrix product) and one irfft2 per pair.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from osteojax.errors import ConfigError


def _check(dxa, mri):
  if dxa.ndim != 4 or mri.ndim != 4:
    raise ValueError(f'feature maps must be [B, H, W, C]; got {dxa.shape} and {mri.shape}')
  if dxa.shape[-1] != mri.shape[-1]:
    raise ValueError(f'channel counts differ: DXA maps {dxa.shape[-1]}, MRI maps {mri.shape[-1]}')
  if mri.shape[1] > dxa.shape[1] or mri.shape[2] > dxa.shape[2]:
    raise ValueError(f'the MRI map {mri.shape[1:3]} must fit inside the DXA map {dxa.shape[1:3]}')
  if dxa.shape[0] == 0 or mri.shape[0] == 0:
    raise ValueError('empty batch of feature maps')


def fast_fft_size(n: int) -> int:
  """Smallest integer >= n whose only prime factors are 2, 3 and 5 (fast FFT lengths)."""
  m = max(int(n), 1)
  while True:
    k = m
    for p in (2, 3, 5):
      while k % p == 0:
        k //= p
    if k == 1:
      return m
    m += 1


def correlation_maps_fft(dxa, mri):
  """All-pairs valid correlation maps by FFT.

  dxa: [N, H, W, C], mri: [M, h, w, C] float32 -> [N, M, H - h + 1, W - w + 1] float32.
  Both maps are zero-padded to (fast_fft_size(H), fast_fft_size(W)) (>= the DXA size, so the
  valid translations never wrap) and transformed channel-first, where the FFT axes are
  contiguous.
  """
  _check(dxa, mri)
  hh, ww = dxa.shape[1:3]
  h, w = mri.shape[1:3]
  size = (fast_fft_size(hh), fast_fft_size(ww))
  fa = jnp.fft.rfft2(jnp.moveaxis(dxa, 3, 1), s=size)                    # [N, C, Hp, Wf]
  fb = jnp.fft.rfft2(jnp.moveaxis(mri, 3, 1), s=size)                    # [M, C, Hp, Wf]
  # cross-correlation theorem: F(corr) = F(a) * conj(F(b)), summed over channels; a batched
  # matrix product over frequencies ([F, N, C] x [F, C, M] inside dot_general).
  prod = jnp.einsum('nckl,mckl->nmkl', fa, jnp.conj(fb), precision=lax.Precision.HIGHEST)
  corr = jnp.fft.irfft2(prod, s=size)                                    # [N, M, Hp, Wp]
  return corr[:, :, :hh - h + 1, :ww - w + 1] / (h * w)


def correlation_maps_direct(dxa, mri):
  """The same maps by a direct (unpadded) lax.conv_general_dilated: the reference.

  dxa: [N, H, W, C], mri: [M, h, w, C] -> [N, M, H - h + 1, W - w + 1].
  """
  _check(dxa, mri)
  h, w = mri.shape[1:3]
  out = lax.conv_general_dilated(dxa, mri, window_strides=(1, 1), padding='VALID',
                                 dimension_numbers=('NHWC', 'OHWI', 'NCHW'),
                                 precision=lax.Precision.HIGHEST)
  return out / (h * w)


def similarity_from_maps(corr):
  """[N, M, Ty, Tx] -> ([N, M] max over translations, [N, M, 2] argmax (dy, dx))."""
  flat = corr.reshape(corr.shape[:2] + (-1,))
  k = jnp.argmax(flat, axis=-1)
  return jnp.max(flat, axis=-1), jnp.stack(jnp.unravel_index(k, corr.shape[2:]), axis=-1)


def similarity_matrix(dxa, mri, method: str = 'fft'):
  """M[i, j] = max over valid translations of corr(DXA map i, MRI map j). -> [N, M].

  method: 'fft' (default) or 'direct' (lax.conv; a reference, slower).
  """
  fn = {'fft': correlation_maps_fft, 'direct': correlation_maps_direct}.get(method)
  if fn is None:
    raise ConfigError(f'unknown correlation method {method!r} (fft or direct)')
  return jnp.max(fn(dxa, mri), axis=(2, 3))


def _pair_similarity(a, b):
  return jnp.max(correlation_maps_direct(a[None], b[None]))


pair_similarity = jax.jit(_pair_similarity)
pair_similarity.__doc__ = """Similarity of one DXA map [H, W, C] and one MRI map [h, w, C] (direct)."""


def similarity_matrix_loop(dxa, mri):
  """The plain per-pair loop (a jitted single-pair correlation called N x M times). -> [N, M]."""
  _check(dxa, mri)
  rows = [[pair_similarity(dxa[i], mri[j]) for j in range(mri.shape[0])]
          for i in range(dxa.shape[0])]
  return jnp.array(rows)
