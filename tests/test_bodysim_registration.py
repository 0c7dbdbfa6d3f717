"""Registration on generated BodySim pairs: conventions, methods against the known transform,
mask transfer, and the encoder's cell centres behind register.to_pixels.

A trained aligner is too slow to train inside a test; the map methods get *position-feature*
maps instead: every pixel carries random Fourier features of its position in the DXA frame
(MRI pixels through the true transform), averaged over each 8 x 8 cell like the encoder's
stride. Such maps match across modalities exactly where the true transform says, so they test
the chain around the encoder (row / col -> x / y, cells -> pixels, keypoint order, errors in
cm), not the encoder.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from osteojax.align import bodysim_registration as br
from osteojax.align import register, registration_eval
from osteojax.align.rigid import Rigid2D
from osteojax.data import bodysim
from osteojax.evaluate import metrics
from osteojax.models import spatial


def position_maps(dxa_hw, mri_hw, truth, channels=64, length=24.0, seed=0):
  """(DXA map [H/8, W/8, C], MRI map [h/8, w/8, C]) of random Fourier position features."""
  rng = np.random.default_rng(seed)
  w = rng.normal(size=(2, channels)) / length
  b = rng.uniform(0, 2 * np.pi, channels)

  def cells(hw, to_dxa):
    h, wd = (hw[0] // 8) * 8, (hw[1] // 8) * 8
    y, x = np.mgrid[0:h, 0:wd]
    p = to_dxa(np.stack([x, y], -1).reshape(-1, 2).astype(float))
    f = np.cos(p @ w + b).reshape(h // 8, 8, wd // 8, 8, channels).mean((1, 3))
    return (f / np.linalg.norm(f, axis=-1, keepdims=True)).astype(np.float32)

  return cells(dxa_hw, lambda p: p), cells(mri_hw, truth.apply)


def as_data(s):
  t = s['truth']
  return dict(dxa=s['dxa'][None], mri=s['mri'][None], dxa_mask=s['dxa_mask'][None],
              mri_mask=s['mri_mask'][None], ids=['s'],
              keypoints_mri=np.array([t['keypoints_mri']]),
              keypoints_dxa=np.array([t['keypoints_dxa']]),
              matrix_mri_to_dxa=np.array([t['matrix_mri_to_dxa']]))


@pytest.fixture(scope='module')
def subjects():
  return [bodysim.make_subject([9, i], 4) for i in range(2)]


def test_truth_transform_matches_bodysim_matrix():
  """(x, y) Rigid2D from the (row, col) matrix == bodysim.apply_transform on flipped points."""
  s = bodysim.make_subject([9, 5], 4)
  m = s['truth']['matrix_mri_to_dxa']
  rc = np.random.default_rng(0).uniform(0, 100, (20, 2))
  want = bodysim.apply_transform(m, rc)[:, ::-1]
  np.testing.assert_allclose(br.truth_transform(m).apply(rc[:, ::-1]), want, atol=1e-9)
  assert br.truth_transform(m).angle == pytest.approx(np.deg2rad(s['truth']['theta_deg']))


def test_keypoint_order():
  assert [bodysim.KEYPOINTS[i] for i in br.KP_ORDER] == list(registration_eval.KEYPOINTS)


def test_methods_recover_known_transform(subjects):
  """Tolerances (mean keypoint error over the 5 keypoints, cm; a pixel is 8.8 mm, a map cell
  7 cm): dense <= 2.5, salient <= 1.5, Mattes MI (on the images) <= 2.0; identity >= 15 (the
  MRI sits 20-30 cm down the DXA); the floor below every method."""
  for s in subjects:
    tr = br.truth_transform(s['truth']['matrix_mri_to_dxa'])
    fd, fm = position_maps(s['dxa'].shape[:2], s['mri'].shape[:2], tr)
    pair = br.make_pairs(as_data(s), fd[None], fm[None])[0]
    e, _, ts = registration_eval.run_methods([pair], br.method_table(s['spacing_mm']), s['spacing_mm'],
                                      warmup=False)
    mean = {k: float(v.mean()) for k, v in e.items()}
    assert mean['dense'] <= 2.5, mean
    assert mean['salient'] <= 1.5, mean
    assert mean['mattes_mi'] <= 2.0, mean
    assert mean['identity'] >= 15.0, mean
    assert mean['floor'] <= min(v for k, v in mean.items() if k != 'floor') + 1e-9
    # the transforms themselves, over the whole MRI grid (pixels)
    assert register.mean_grid_error(ts['salient'][0], tr, s['mri'].shape[:2]) <= 1.5
    assert register.mean_grid_error(ts['dense'][0], tr, s['mri'].shape[:2]) <= 2.5


def test_mask_transfer_with_true_transform(subjects):
  """DXA masks moved by the true transform overlap the MRI masks (Dice >= 0.75 per label; the
  DXA mask is a projection, the MRI one a slice, so not 1); moved by the identity, < 0.2."""
  for s in subjects:
    tr = br.truth_transform(s['truth']['matrix_mri_to_dxa'])
    hw = s['mri'].shape[:2]
    moved = br.transfer_masks(s['dxa_mask'][None], [tr], hw)[0]
    ident = br.transfer_masks(s['dxa_mask'][None], [register.identity()], hw)[0]
    good = metrics.dice(moved, s['mri_mask'], [1, 2, 3])
    bad = metrics.dice(ident, s['mri_mask'], [1, 2, 3])
    assert min(good.values()) >= 0.75, good
    assert max(bad.values()) < 0.2, bad


@pytest.mark.slow
def test_encoder_cell_centre_matches_to_pixels():
  """register.to_pixels puts map cell j at pixel 8 j + 3.5. Check it against the encoder
  itself: the receptive field of an interior cell (union of the input-gradient supports of a
  random channel mix over random inputs) is centred there in both axes."""
  enc = spatial.SpatialEncoder(widths=(4, 4, 4), last_width=4, embed_dim=8, axis_name=None)
  x0 = jnp.zeros((1, 96, 80, 1))
  v = enc.init(jax.random.PRNGKey(0), x0, train=False)
  i, j = 5, 4                                   # interior cell of a 12 x 10 map

  r = jax.random.normal(jax.random.PRNGKey(9), (8,))        # random mix of the channels
  grad = jax.grad(lambda x: enc.apply(v, x, train=False)[0, i, j] @ r)   # eager: no compile
  support = np.zeros((96, 80), bool)
  for s in range(3):
    g = np.asarray(grad(jax.random.normal(jax.random.PRNGKey(s), x0.shape)))[0, ..., 0]
    support |= g != 0
  rows, cols = np.nonzero(support)
  centre = ((rows.min() + rows.max()) / 2, (cols.min() + cols.max()) / 2)
  assert centre == (8 * i + 3.5, 8 * j + 3.5)
  t = register.to_pixels(Rigid2D(0.0, (1.0, 0.0)), 8)          # one cell right = 8 px
  np.testing.assert_allclose(t.apply([[8 * j + 3.5, 8 * i + 3.5]]),
                             [[8 * (j + 1) + 3.5, 8 * i + 3.5]])


def test_placement_check(subjects):
  """Position-feature maps peak at the true placement (within one cell); with the truth moved
  3 cells down the same maps are 3 cells off."""
  truths = [br.truth_transform(s['truth']['matrix_mri_to_dxa']) for s in subjects]
  maps = [position_maps(s['dxa'].shape[:2], s['mri'].shape[:2], t)
          for s, t in zip(subjects, truths)]
  fd, fm = [m[0] for m in maps], [m[1] for m in maps]
  good = br.placement_check(fd, fm, truths)
  assert good['within_one_cell'] == 1.0 and good['mean_distance_cells'] < 1.0, good
  moved = [Rigid2D(0.0, (0.0, 24.0)) @ t for t in truths]
  bad = br.placement_check(fd, fm, moved)
  assert bad['within_one_cell'] == 0.0, bad
  assert abs(bad['mean_distance_cells'] - 3.0) < 1.0, bad
  dy, dx = bad['median_offset_cells']            # found - true: the truth was moved 3 cells down
  assert abs(dy + 3.0) < 1.0 and abs(dx) < 1.0, bad
  assert '(median offset -3' in br.placement_sentence(bad)


def test_cell_match_check(subjects):
  """Position-feature maps: almost every MRI cell's most similar DXA cell is at its true
  position (rank near 0); with the truth moved 3 cells down none is, and the true cell ranks
  far down; the chance column is what a random ranking gives."""
  truths = [br.truth_transform(s['truth']['matrix_mri_to_dxa']) for s in subjects]
  maps = [position_maps(s['dxa'].shape[:2], s['mri'].shape[:2], t)
          for s, t in zip(subjects, truths)]
  fd, fm = [m[0] for m in maps], [m[1] for m in maps]
  good = br.cell_match_check(fd, fm, truths, ks=(1, 10))
  assert good['pairs'] == 2 and good['top_k_correct'][1] > 0.9, good
  assert good['median_true_rank'] < 0.01, good
  moved = [Rigid2D(0.0, (0.0, 24.0)) @ t for t in truths]
  bad = br.cell_match_check(fd, fm, moved, ks=(1, 10))
  assert bad['top_k_correct'][1] < 0.05 and bad['median_true_rank'] > 0.01, bad
  hw = np.mean([d.shape[0] * d.shape[1] for d in fd])   # 1 to 9 cells within one cell
  assert 1 / hw - 1e-9 <= good['chance'][1] <= 9 / hw + 1e-9, good
  assert abs(good['chance'][10] - 10 * good['chance'][1]) < 1e-9, good
  rng = np.random.default_rng(0)                 # random maps: near chance
  noise = br.cell_match_check([rng.normal(size=d.shape) for d in fd],
                              [rng.normal(size=m.shape) for m in fm], truths, ks=(10,))
  assert noise['top_k_correct'][10] < 3 * noise['chance'][10] + 0.02, noise
  assert 0.35 < noise['median_true_rank'] < 0.65, noise
  assert 'among its 10 most similar' in br.cell_match_sentence(noise)
