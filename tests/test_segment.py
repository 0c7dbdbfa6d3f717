"""U-Net segmentation task: shapes, training on generated shapes, 1 vs 4 devices, bad input."""
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from osteojax.align import segment
from osteojax.data.io import OsteoDataError
from osteojax.models import unet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'configs'))
import unet as unet_config  # noqa: E402
import multidevice  # noqa: E402  (tests/multidevice.py)


def test_unet_shapes_odd_sizes():
  model = unet.UNet(widths=(4, 8, 8), num_classes=4, axis_name=None)
  x = jnp.ones((2, 21, 13, 2))
  v = jax.jit(lambda k, y: model.init(k, y, train=False))(jax.random.key(0, impl='rbg'), x)
  out = jax.jit(lambda v, y: model.apply(v, y, train=False))(v, x)
  assert out.shape == (2, 21, 13, 4) and np.isfinite(out).all()


def test_shapes_labels():
  d = segment.shapes(4, (32, 16), 2, 0.1, seed=0)
  assert d.images.shape == (4, 32, 16, 2) and d.masks.shape == (4, 32, 16)
  for m in d.masks:
    assert set(np.unique(m)) == {0, 1, 2, 3}


def test_training_raises_dice(tmp_path):
  config = unet_config.get_config('tiny')
  train, test = segment.load(config)
  model = segment.build_model(config)
  init = segment.init_state(config, model, train.images.shape[1:], 1)
  predict_fn = segment.make_predict_fn(model)
  before = segment.dice_table(
      segment.predict(predict_fn, {'params': init.params, 'batch_stats': init.batch_stats},
                      test.images), test.masks, 4)['mean_foreground']['mean']
  res, _ = segment.train_and_evaluate(config, str(tmp_path), train, test)
  after = res['dice']['mean_foreground']['mean']
  assert before < 0.3 and after > 0.5, (before, after)
  saved = json.load(open(tmp_path / 'dice.json', encoding='utf-8'))
  assert saved['dice']['mean_foreground']['mean'] == after


@pytest.mark.slow      # two subprocesses that each compile the pmapped step: about a minute
def test_one_and_four_devices_agree():
  one, four = multidevice.run('pmap_segment.py')
  assert one['devices'] == 1 and four['devices'] == 4
  np.testing.assert_allclose(one['losses'], four['losses'], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(one['param_sum'], four['param_sum'], rtol=1e-5)
  np.testing.assert_allclose(one['stats_sum'], four['stats_sum'], rtol=1e-4, atol=1e-5)
  assert len(set(np.round(one['losses'], 4))) > 1


def test_npz_loading_and_bad_input(tmp_path):
  d = segment.shapes(3, (8, 8), 1, 0.1, seed=0)
  for i in range(3):
    np.savez(tmp_path / f'{i}.npz', image=d.images[i, ..., 0], mask=d.masks[i])
  got = segment.load_npz_dir(str(tmp_path))
  assert got.images.shape == (3, 8, 8, 1)
  np.testing.assert_array_equal(got.masks, d.masks)
  with pytest.raises(OsteoDataError, match='no .npz'):
    segment.load_npz_dir(str(tmp_path / 'nothing'))
  np.savez(tmp_path / '3.npz', image=np.zeros((8, 8)), label=np.zeros((8, 8), int))
  with pytest.raises(OsteoDataError, match='"image" and "mask"'):
    segment.load_npz_dir(str(tmp_path))
  os.remove(tmp_path / '3.npz')
  (tmp_path / '4.npz').write_bytes(b'not a zip')
  with pytest.raises(OsteoDataError, match='unreadable'):
    segment.load_npz_dir(str(tmp_path))
  os.remove(tmp_path / '4.npz')
  np.savez(tmp_path / '5.npz', image=np.zeros((8, 8)), mask=np.full((8, 8), 0.5))
  with pytest.raises(OsteoDataError, match='integer'):
    segment.load_npz_dir(str(tmp_path))
  bad = segment.SegData(d.images, d.masks + 5)
  with pytest.raises(ValueError, match='outside 0..3'):
    bad.check_labels(4)
