"""FFT all-pairs correlation against lax.conv, a hand-computed 4x4 case and a known shift."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from osteojax.align import correlation


def _unit(x):
  return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def test_fft_equals_lax_conv():
  k1, k2 = jax.random.split(jax.random.PRNGKey(0))
  a = _unit(jax.random.normal(k1, (3, 13, 9, 16)))
  b = _unit(jax.random.normal(k2, (4, 8, 5, 16)))
  fft = correlation.correlation_maps_fft(a, b)
  ref = correlation.correlation_maps_direct(a, b)
  assert fft.shape == ref.shape == (3, 4, 6, 5)
  np.testing.assert_allclose(fft, ref, atol=1e-4)
  np.testing.assert_allclose(correlation.similarity_matrix(a, b),
                             correlation.similarity_matrix_loop(a, b), atol=1e-4)


def test_4x4_by_hand():
  a = np.zeros((1, 4, 4, 1), np.float32)
  a[0, 2, 1, 0] = 1.0
  a[0, 3, 2, 0] = 2.0
  b = np.zeros((1, 2, 2, 1), np.float32)
  b[0, 0, 0, 0] = 1.0
  b[0, 1, 1, 0] = 1.0
  got = np.asarray(correlation.correlation_maps_fft(jnp.asarray(a), jnp.asarray(b)))[0, 0]
  want = np.zeros((3, 3))
  for dy in range(3):
    for dx in range(3):
      want[dy, dx] = (a[0, dy, dx, 0] + a[0, dy + 1, dx + 1, 0]) / 4
  np.testing.assert_allclose(got, want, atol=1e-6)
  assert want[2, 1] == 0.75                # the diagonal pair: (1 + 2) / 4


def test_known_shift_is_found():
  a = _unit(jax.random.normal(jax.random.PRNGKey(3), (1, 20, 12, 8)))
  b = a[:, 7:7 + 9, 2:2 + 6]                # the MRI map is a crop at (7, 2)
  corr = correlation.correlation_maps_fft(a, b)
  sim, arg = correlation.similarity_from_maps(corr)
  np.testing.assert_allclose(sim[0, 0], 1.0, atol=1e-5)
  assert tuple(np.asarray(arg[0, 0])) == (7, 2)


def test_gradients_match():
  k1, k2 = jax.random.split(jax.random.PRNGKey(1))
  a = jax.random.normal(k1, (2, 7, 6, 3))
  b = jax.random.normal(k2, (2, 4, 3, 3))
  f = lambda m: lambda x, y: jnp.sum(jnp.sin(correlation.similarity_matrix(x, y, m)))
  ga = jax.grad(f('fft'), argnums=(0, 1))(a, b)
  gd = jax.grad(f('direct'), argnums=(0, 1))(a, b)
  for x, y in zip(ga, gd):
    np.testing.assert_allclose(x, y, atol=1e-4)


def test_bad_shapes():
  a = jnp.zeros((2, 8, 8, 4))
  with pytest.raises(ValueError, match='channel counts differ'):
    correlation.similarity_matrix(a, jnp.zeros((2, 4, 4, 3)))
  with pytest.raises(ValueError, match='must fit inside'):
    correlation.similarity_matrix(a, jnp.zeros((2, 9, 4, 4)))
  with pytest.raises(ValueError, match='empty batch'):
    correlation.similarity_matrix(a, jnp.zeros((0, 4, 4, 4)))
  with pytest.raises(ValueError, match='unknown correlation method'):
    correlation.similarity_matrix(a, jnp.zeros((2, 4, 4, 4)), 'gpu')


def test_fast_fft_size():
  assert [correlation.fast_fft_size(n) for n in (1, 7, 37, 62, 100, 101)] == [1, 8, 40, 64, 100, 108]


def test_keep_freed_memory_subprocess():
  """hostmem.keep_freed_memory: accepted by glibc here (Linux CI), refused with the opt-out
  variable; in a subprocess, so the test process keeps its allocator as it is."""
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  code = 'from osteojax.train import hostmem; print(hostmem.keep_freed_memory())'
  for env, want in (({}, 'True'), ({'OSTEOJAX_KEEP_FREED_MEMORY': '0'}, 'False')):
    r = subprocess.run([sys.executable, '-c', code], cwd=root, capture_output=True,
                       encoding='utf-8', errors='replace', env=dict(os.environ, **env))
    assert r.stdout.strip() == want, r.stderr
