"""3-D ViT and MAE: patches, masking, the loss on masked patches against hand computations, the
parameter count at ViT-B size, 1 vs 4 devices, and MAE -> fine-tuning end to end (tiny)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import multidevice
import pretrain_finetune
from osteojax.models import vit3d
from osteojax.objectives import mae


def test_patchify_against_slices_and_inverse():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 6, 8, 3))
  t = vit3d.patchify(x, 2)
  assert t.shape == (2, 2 * 3 * 4, 8 * 3)
  # token (i, j, k) in raster order holds x[:, 2i:2i+2, 2j:2j+2, 2k:2k+2, :] flattened z-y-x-c
  i, j, k = 1, 2, 3
  np.testing.assert_array_equal(t[:, (i * 3 + j) * 4 + k],
                                x[:, 2 * i:2 * i + 2, 2 * j:2 * j + 2, 2 * k:2 * k + 2].reshape(2, -1))
  np.testing.assert_array_equal(vit3d.unpatchify(t, 2, (2, 3, 4), 3), x)
  with pytest.raises(ValueError, match='not a multiple of the patch size'):
    vit3d.patchify(x, 4)


def test_random_keep_masks_three_quarters():
  keep, mask = mae.random_keep(jax.random.PRNGKey(0), 64, 0.75)
  assert keep.shape == (16,) and len(set(np.asarray(keep).tolist())) == 16
  assert float(mask.sum()) == 48 and float(mask[keep].sum()) == 0
  keep2, _ = mae.random_keep(jax.random.PRNGKey(1), 64, 0.75)
  assert set(np.asarray(keep).tolist()) != set(np.asarray(keep2).tolist())
  assert mae.num_kept(64, 0.75) == 16 and mae.num_kept(3, 0.9) == 1


def test_masked_mse_counts_masked_patches_only():
  target = jnp.zeros((1, 4, 2))
  pred = jnp.array([[[1.0, 1.0], [2.0, 0.0], [5.0, 5.0], [0.0, 0.0]]])
  mask = jnp.array([[1.0, 1.0, 0.0, 0.0]])      # patches 0 and 1 masked
  # patch 0: mean((1, 1)^2) = 1; patch 1: mean((2, 0)^2) = 2; mean over the two masked = 1.5
  assert float(mae.masked_mse(pred, target, mask)) == pytest.approx(1.5)


def test_normalized_targets_per_patch():
  p = jnp.array([[[1.0, 2.0, 3.0, 4.0], [5.0, 5.0, 5.0, 5.0]]])
  t = mae.normalized_targets(p)
  np.testing.assert_allclose(t[0, 0], (np.array([1, 2, 3, 4]) - 2.5) / np.sqrt(1.25 + 1e-6),
                             rtol=1e-6)
  np.testing.assert_allclose(t[0, 1], 0.0)       # a constant patch: zeros, no division by zero


def test_sincos_position_embedding():
  e = vit3d.sincos_3d((2, 3, 4), 24)
  assert e.shape == (24, 24)
  assert len({tuple(r) for r in np.round(e, 6)}) == 24   # every position distinct
  # per axis dim // 6 = 4 sines then 4 cosines: the origin is (0 0 0 0 1 1 1 1) three times
  np.testing.assert_allclose(e[0], ([0.0] * 4 + [1.0] * 4) * 3)
  # one step along the last axis moves only its block: sin(1 / 10000^(k / 4)), k = 0..3
  np.testing.assert_allclose(e[1, 16:20], np.sin(1 / 10000 ** (np.arange(4) / 4)), rtol=1e-6)
  np.testing.assert_allclose(e[1, :16], e[0, :16])


def _block_count(d):
  return 4 * d * d + 4 * d + 4 * d + 8 * d * d + 5 * d  # attention, two LayerNorms, MLP


def test_vit_b_parameter_count():
  enc = vit3d.ViT3D()                                    # ViT-B: 16^3 patches, 768, 12 x 12
  shapes = jax.eval_shape(lambda: enc.init(jax.random.PRNGKey(0), jnp.ones((1, 64, 64, 64, 1))))
  n = sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(shapes))
  d = 768
  assert n == 16 ** 3 * d + d + 12 * _block_count(d) + 2 * d
  # The published ViT-B/16 (Dosovitskiy et al. 2021): 86M with its 2-D 16x16x3 patch
  # embedding, class token, 197 position embeddings and 1000-class head around the same blocks.
  vit_b_2d = 16 * 16 * 3 * d + d + d + 197 * d + 12 * _block_count(d) + 2 * d + d * 1000 + 1000
  assert abs(vit_b_2d - 86.6e6) < 0.005 * 86.6e6, vit_b_2d


def test_mae_steps_one_and_four_devices_agree():
  one, four = multidevice.run('pmap_losses.py', 'mae')
  np.testing.assert_allclose(one['losses'], four['losses'], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(one['proto_sum'], four['proto_sum'], rtol=1e-5, atol=1e-5)
  assert one['losses'][-1] < one['losses'][0]


@pytest.mark.slow
def test_mae_then_finetune_tiny(tmp_path):
  """`mae` pre-trains the tiny ViT and the fine-tuning task starts from its encoder."""
  r = pretrain_finetune.run(tmp_path, 'mae', 'vit3d')
  assert '[mae] done' in r['pre_log'] and f'encoder from {r["pre"]}' in r['ft_log']
  assert r['predictions'].exists() and 0.0 <= r['probe']['auc'] <= 1.0
