"""OsteoSim CT rendering: HU follows the truth, noise follows the scanner, anatomy the level."""
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from osteojax.data import cohort, phantom
from osteojax.data import params as P

GEOM = P.RoiGeometry()


@pytest.fixture(scope='module')
def rows():
  t = cohort.sample_cohort(0.02, seed=0)
  lab = t[t.split != 'pretrain'].sort_values('vbmd')
  return lab.iloc[np.linspace(0, len(lab) - 1, 12).astype(int)]


@pytest.fixture(scope='module')
def rendered(rows):
  return [phantom.render_roi(r, GEOM, np.random.default_rng(i))
          for i, (_, r) in enumerate(rows.iterrows())]


def test_roi_shapes_and_types(rendered):
  for ct, mask in rendered:
    assert ct.shape == GEOM.shape and ct.dtype == np.int16
    assert mask.shape == GEOM.shape and mask.dtype == np.uint8
    assert 0 < mask.mean() < 0.6
    assert mask[16, 16, 16] == 1           # the target body sits at the centre


def test_trabecular_hu_follows_truth(rows, rendered):
  errors, core_hu = [], []
  for (_, r), (ct, mask) in zip(rows.iterrows(), rendered):
    core = ndimage.binary_erosion(mask, iterations=3)
    s = P.SCANNERS[r.scanner]
    expected = r.hu_true + (s['kv_gain'] - 1) * max(r.hu_true, 0) + s['offset']
    errors.append(ct[core].mean() - expected)
    core_hu.append(ct[core].mean())
  assert abs(np.mean(errors)) < 8 and np.std(errors) < 15, errors
  assert np.corrcoef(rows.vbmd, core_hu)[0, 1] > 0.9


def test_body_size_follows_level_and_patient(rows, rendered):
  for (_, r), (ct, mask) in zip(rows.iterrows(), rendered):
    h, w, d = (v * r.size_factor for v in cohort.level_size_mm(r.level))
    xs = np.nonzero(mask.any((0, 1)))[0]
    width = (xs.max() - xs.min() + 1) * GEOM.spacing_mm
    assert abs(width - min(w, GEOM.shape[2] * GEOM.spacing_mm)) <= 2 * GEOM.spacing_mm
    zs = np.nonzero(mask.any((1, 2)))[0]
    height = (zs.max() - zs.min() + 1) * GEOM.spacing_mm
    assert abs(height - h) <= 2 * GEOM.spacing_mm


@pytest.mark.parametrize('scanner', sorted(P.SCANNERS))
def test_noise_follows_scanner(scanner):
  flat = np.full((32, 32, 32), 40.0, np.float32)
  out = phantom.acquire(flat, scanner, 0.9, 2, np.random.default_rng(0))
  want = phantom.noise_sd(scanner, (1.8, 1.8, 1.8))
  assert abs(out.std() / want - 1) < 0.1
  s = P.SCANNERS[scanner]
  assert abs(out.mean() - (40 * s['kv_gain'] + s['offset'])) < 2
  # DATA_FACTS §8: 20-40 HU at 1 mm, 10-15 HU at 5 mm, pixels 0.6-0.9 mm, slices 0.5-5 mm.
  assert 20 <= s['noise_1mm'] <= 40
  if s['slice_mm'] >= 5:
    assert 10 <= phantom.noise_sd(scanner, (s['slice_mm'], s['pixel_mm'], s['pixel_mm'])) <= 15
  assert 0.6 <= s['pixel_mm'] <= 0.9 and 0.5 <= s['slice_mm'] <= 5


def test_sheet_threshold_gives_bone_fraction():
  field = phantom.smooth_field(np.random.default_rng(0), (48, 48, 48), 1.3)
  for bvtv in (0.05, 0.12, 0.25):
    t = phantom.sheet_threshold(bvtv)
    frac = np.clip((t - np.abs(field)) / phantom._W + 0.5, 0, 1).mean()
    assert abs(frac - bvtv) < 0.01


def test_render_is_deterministic(rows):
  r = rows.iloc[0]
  a = phantom.render_roi(r, GEOM, np.random.default_rng(5))
  b = phantom.render_roi(r, GEOM, np.random.default_rng(5))
  c = phantom.render_roi(r, GEOM, np.random.default_rng(6))
  assert (a[0] == b[0]).all() and (a[1] == b[1]).all()
  assert not (a[0] == c[0]).all()


@pytest.mark.parametrize('shape,sigma', [((64, 64, 64), 13.3), ((20, 33, 48), (0.0, 2.5, 30.0)),
                                         ((16, 16, 16), 1.3)])
def test_fft_gaussian_equals_scipy_wrap(shape, sigma):
  """The FFT smoothing of the soft-tissue field is scipy's wrap-mode Gaussian (kernels longer
  than the axis, anisotropic sigma and sigma 0 included)."""
  x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
  want = ndimage.gaussian_filter(x, sigma, mode='wrap')
  got = phantom.gaussian_filter_wrap(x, sigma)
  assert got.dtype == np.float32 and got.shape == want.shape
  np.testing.assert_allclose(got, want, atol=1e-6 * np.abs(want).max() + 1e-7)


def test_bodies_rendered_on_their_slices_equal_the_whole_grid(rows):
  """render_hu computes each body and disc only on the slices it can reach (z along axis 0);
  given the same grid as full [D, H, W] coordinates it computes every voxel: the same
  occupancies and HU, up to float32 rounding of vectorised math (tails of SIMD loops)."""
  h = GEOM.spacing_mm / GEOM.supersample
  zz, yy, xx = phantom.roi_grid(GEOM)
  shape = np.broadcast_shapes(zz.shape, yy.shape, xx.shape)
  full = [np.broadcast_to(a, shape).copy() for a in (zz, yy, xx)]
  for i, row in enumerate(rows.head(3).to_dict('records')):
    bodies = phantom.vertebra_bodies(row, np.random.default_rng(i))
    assert len(bodies) == 3 and abs(bodies[1]['center'][0]) > bodies[0]['size'][0] / 2
    hu_s, occ_s = phantom.render_hu(zz, yy, xx, bodies, h, np.random.default_rng(7))
    hu_f, occ_f = phantom.render_hu(*full, bodies, h, np.random.default_rng(7))
    np.testing.assert_allclose(hu_s, hu_f, rtol=0, atol=1e-3)
    for a, b in zip(occ_s, occ_f):
      np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    assert all(o.shape == hu_f.shape for o in occ_s)


def test_texture_shows_marrow_fat_that_the_mean_hu_hides(load_tool):
  """Two vertebrae with the same mean trabecular HU, one in lean marrow with less bone, one in
  fatty marrow with more: the ROI's trabecular mean cannot tell them apart, its SD (the
  sheets' contrast, bone fraction x (1 - bone fraction)) always can, on one scanner
  (tools/texture_identifiability.py; the gap between the density-reader and CT-only oracles)."""
  t = load_tool('texture_identifiability')
  res, (lo, hi) = t.compare(dict(t.base_row(0), scanner='A1'), P.RoiGeometry((32,) * 3, 1.8),
                            100.0, (35.0, 65.0), n=4, seed=0)
  assert res['bvtv'][1] > res['bvtv'][0]
  assert abs(res['mean']['low_fat'][0] - res['mean']['high_fat'][0]) < 10
  assert res['sd']['auc'] == 1.0 and res['sd']['high_fat'][0] > 1.15 * res['sd']['low_fat'][0]
  assert res['both_sd']['auc'] == 1.0 and res['hp_sd']['low_fat'][0] > 0
  # summarise's AUC by hand: 3 of the 4 (low, high) pairs ordered -> 0.75
  s = t.summarise(np.array([[0., 1., 1.], [2., 3., 1.]]), np.array([[1., 2., 1.], [3., 0.5, 1.]]))
  assert s['mean']['auc'] == 0.75 and s['sd']['auc'] == 0.25 and s['hp_sd']['auc'] == 0.5
  # Two scanners whose scale hides the groups from either SD alone: the groups differ in the
  # ratio SD / high-pass SD (1.3 against 1.0), the scanners scale both by 1 or 2.
  rng = np.random.default_rng(0)
  scale = np.repeat([1.0, 2.0], 20)[:, None]
  hp = 50 * rng.uniform(0.9, 1.1, (40, 1)) * scale
  lo, hi = np.c_[hp, hp], np.c_[1.3 * hp, hp]
  assert t.summarise(np.c_[lo[:, :1], lo], np.c_[hi[:, :1], hi])['sd']['auc'] < 0.85
  assert t.joint_auc(lo, hi) == 1.0
  assert t.joint_auc(lo, np.c_[lo[:, 0] * rng.uniform(0.9, 1.1, 40), lo[:, 1]]) < 0.8


def test_reader_curve_statistics_and_readers(load_tool):
  """tools/reader_curve.py: the ROI statistics against numpy on a hand-built cube (its
  trabecular region is the mask eroded by ceil(3.5 / 1.8) = 2 voxels per axis), the design's
  columns, and both readers' AUC on a separable and on a label-free sample."""
  t = load_tool('reader_curve')
  rng = np.random.default_rng(0)
  img = rng.normal(100, 20, (20, 20, 20))
  mask = np.zeros(img.shape, bool)
  mask[4:16, 4:16, 4:16] = True                               # 12^3
  s = t.roi_stats(img, mask, (1.8, 1.8, 1.8))
  core = img[6:14, 6:14, 6:14]                                # eroded by 2: 8^3
  assert s['mean'] == pytest.approx(core.mean()) and s['sd'] == pytest.approx(core.std())
  assert s['p90'] == pytest.approx(np.percentile(core, 90))
  assert s['volume'] == 12 ** 3 and s['extent_z'] == s['extent_x'] == 11
  rim = mask.copy()
  rim[6:14, 6:14, 6:14] = False
  assert s['rim_mean'] == pytest.approx(img[rim].mean())
  assert s['hp_sd'] == pytest.approx(ndimage.laplace(img)[6:14, 6:14, 6:14].std())
  n = 160
  d = pd.DataFrame({k: rng.uniform(1, 2, n) for k in t.STATS})
  d['device'] = np.where(np.arange(n) % 2, 'hologic', 'ge_lunar')
  d['level'] = 'L1'
  d['site'] = 'A'
  x = t.design(d, ['ge_lunar', 'hologic'], ['L1', 'L2'])
  k = len(t.STATS)
  assert x.shape == (n, 3 * k + 2 + 2)
  assert np.allclose(x[:, t.STATS.index('sd')], np.log(d.sd))
  assert np.allclose(x[1::2, k:2 * k], 0) and np.allclose(x[1::2, 2 * k:3 * k], x[1::2, :k])
  d['label'] = (d['mean'] < 1.5).astype(int)
  tr, ev = d.iloc[:80], d.iloc[80:]
  sep = t.fit_score(tr, {'test': ev}, ['ge_lunar', 'hologic'], ['L1', 'L2'])
  assert sep['lr']['test'] > 0.97 and sep['trees']['test'] > 0.9
  d['label'] = rng.integers(0, 2, n)
  null = t.fit_score(d.iloc[:80], {'test': d.iloc[80:]}, ['ge_lunar', 'hologic'], ['L1', 'L2'])
  assert abs(null['lr']['test'] - 0.5) < 0.2


def test_reader_curve_model_data_folder(load_tool, tmp_path):
  """--model-data: the train split is whole patients of the other cohort's train split, at
  least n vertebrae and no more than one patient over; validation and test are the data set's
  own rows, unchanged but for absolute paths; the drawn ids carry the cohort's prefix."""
  t = load_tool('reader_curve')

  def manifest(root, patients, splits):
    rows = []
    for i, (split, k) in enumerate(zip(splits, patients)):
      for v in range(k):
        rows.append(dict(roi_id=f'P{i}-L{v + 1}', patient_id=f'P{i}', split=split,
                         device='hologic', label=(i + v) % 2, label_hologic=(i + v) % 2,
                         label_ge_lunar=0, label_medix=0, path=f'rois/P{i}-L{v + 1}.nii.gz',
                         mask_path=f'rois/P{i}-L{v + 1}_mask.nii.gz'))
    root.mkdir()
    pd.DataFrame(rows).to_csv(root / 'manifest.csv', index=False)
    return str(root)

  base = manifest(tmp_path / 'own', [3, 2, 4, 1], ['train', 'valid', 'test', 'test'])
  extra = manifest(tmp_path / 'extra', [4, 3, 2, 5, 1, 4, 2],
                   ['train', 'train', 'train', 'train', 'valid', 'train', 'test'])
  folder = t.write_model_data(base, extra, 7, 8, str(tmp_path / 'out'))
  m = pd.read_csv(f'{folder}/manifest.csv')
  train, evals = m[m.split == 'train'], m[m.split != 'train']
  drawn = {p[len('s7-'):] for p in train.patient_id}
  sizes = {'P0': 4, 'P1': 3, 'P2': 2, 'P3': 5, 'P5': 4}
  assert all(p.startswith('s7-') for p in train.roi_id) and drawn <= set(sizes)
  assert len(train) == sum(sizes[p] for p in drawn) >= 8
  assert len(train) - max(sizes[p] for p in drawn) < 8          # one patient tipped it over n
  own = pd.read_csv(f'{base}/manifest.csv')
  want = own[own.split != 'train']
  assert list(evals.roi_id) == list(want.roi_id) and list(evals.label) == list(want.label)
  assert all(p == str(tmp_path / 'own' / q) for p, q in zip(evals.path, want.path))
  assert all(p.startswith(str(tmp_path / 'extra') + '/rois/') for p in train.mask_path)
