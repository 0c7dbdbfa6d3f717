"""2-D U-Net segmenter (annotation transfer): spine, pelvis, pelvic cavity on MRI slices.

  python -m osteojax.main --config configs/unet.py --workdir runs/unet
  python -m osteojax.main --config configs/unet.py --workdir runs/unet_mri \
      --config.data.source=npz --config.data.train_dir=DIR/train --config.data.test_dir=DIR/test

The default trains on generated shapes (a smoke run); source 'npz' reads folders of .npz files
with 'image' [H, W, C] and 'mask' [H, W] (labels 0 background, 1 spine, 2 pelvis, 3 pelvic
cavity): the training folder holds masks moved from DXA (or true / identity-moved masks for the
bounds), the test folder true MRI masks. `:paper` uses Ronneberger's widths (64 .. 1024) for
the paper's MRI size (501 x 224, 2 channels); `:tiny` is for tests. Loss: pixel cross-entropy
+ 0.5 x soft Dice (our choice; the paper does not give its U-Net's training details).
"""
import ml_collections


def get_config(arg=None):
  c = ml_collections.ConfigDict()
  c.task = 'unet'
  c.seed = 0                 # model init and batch order
  c.batch_size = 8           # global batch, split over devices
  c.steps = 300
  c.log_every = 25
  c.ckpt_every = 100
  c.data = ml_collections.ConfigDict(dict(
      source='shapes', train_dir='', test_dir='', seed=0, n_train=64, n_test=16, hw=(64, 32),
      channels=2, noise=0.3))
  c.model = ml_collections.ConfigDict(dict(widths=(16, 32, 64, 128), num_classes=4))
  c.loss = ml_collections.ConfigDict(dict(dice_weight=0.5))
  c.optim = ml_collections.ConfigDict(dict(
      lr=1e-3, b1=0.9, b2=0.999, weight_decay=1e-4, warmup_steps=20, decay='cosine'))
  if arg == 'paper':
    c.data.hw = (501, 224)
    c.model.widths = (64, 128, 256, 512, 1024)
    c.steps, c.log_every, c.ckpt_every = 5000, 50, 500
  elif arg == 'tiny':
    c.data.n_train, c.data.n_test, c.data.hw = 16, 8, (32, 16)
    c.model.widths = (8, 16)
    c.batch_size, c.steps, c.log_every, c.ckpt_every = 8, 200, 50, 200
    c.optim.lr, c.optim.warmup_steps = 3e-3, 5
  elif arg:
    raise ValueError(f'unknown config argument {arg!r} (use paper or tiny)')
  return c
