"""TP-SwAV pre-training: views drawn from each vertebra's texture pool (the paper's method).

  python -m osteojax.main --config configs/tp_swav.py --workdir runs/tp_swav
  python -m osteojax.main --config configs/tp_swav.py:paper --workdir runs/tp_swav_paper

The default is sized for a 2-core CPU and the default OsteoSim data (slim ResNet34-3D, 32^3);
`:paper` gives the paper's values (ResNet34-3D, batch 32, AdamW lr 1e-4, weight decay 0.1,
100 warm-up of 300 epochs) on the full-size data set, for accelerators. `:tiny` is for tests.
Where the paper is silent we follow SwAV: epsilon 0.05, 3 Sinkhorn iterations are SwAV's;
we run Sinkhorn to a 1e-4 marginal tolerance (at most 50 iterations) instead; temperature 0.1;
prototypes frozen for the first iterations; no queue (batch codes only).
"""
import ml_collections


def get_config(arg=None):
  c = ml_collections.ConfigDict()
  c.task = 'tp_swav'
  c.views = 'pool'            # 'pool': TP-SwAV views; 'crops': SwAV random crops
  c.seed = 0                  # model init, batch order, augmentations (not the data)
  c.batch_size = 32           # global batch, split over devices
  c.epochs = 2
  c.log_every = 5
  c.ckpt_every = 20
  c.data = ml_collections.ConfigDict(dict(
      seed=0, dir='', scale=0.05, labeled_scale=0.2, roi_shape=(32, 32, 32), spacing_mm=1.8,
      supersample=2, workers=0))
  c.model = ml_collections.ConfigDict(dict(
      name='resnet3d', stage_sizes=(3, 4, 6, 3), widths=(16, 32, 64, 128), stem_stride=2,
      stem_pool=True))
  c.swav = ml_collections.ConfigDict(dict(
      num_views=2, hidden_dim=256, proj_dim=64, num_prototypes=32, temperature=0.1,
      epsilon=0.05, sinkhorn_iterations=50, sinkhorn_threshold=1e-4,
      freeze_prototypes_steps=10, flip_prob=0.5, intensity=0.1, crop_min=0.6))
  c.optim = ml_collections.ConfigDict(dict(
      lr=1e-4, b1=0.9, b2=0.999, weight_decay=0.1, warmup_epochs=1, decay='cosine'))
  if arg == 'paper':
    c.data.scale, c.data.labeled_scale = 1.0, None
    c.data.roi_shape, c.data.spacing_mm = (64, 64, 64), 0.9
    c.model.widths = (64, 128, 256, 512)
    c.epochs, c.optim.warmup_epochs = 300, 100
    c.swav.hidden_dim, c.swav.proj_dim, c.swav.num_prototypes = 2048, 128, 300
    c.swav.freeze_prototypes_steps = 313      # SwAV: first epoch (about 30k/32 steps / 3)
    c.log_every, c.ckpt_every = 50, 1000
  elif arg == 'tiny':
    c.data.scale, c.data.labeled_scale = 0.004, None
    c.data.roi_shape, c.data.spacing_mm = (16, 16, 16), 3.6
    c.model.stage_sizes, c.model.widths, c.model.stem_pool = (1, 1), (4, 8), False
    c.swav.hidden_dim, c.swav.proj_dim, c.swav.num_prototypes = 16, 8, 6
    c.swav.freeze_prototypes_steps = 1
    c.batch_size, c.epochs, c.log_every, c.ckpt_every = 8, 2, 1, 2
  elif arg:
    raise ValueError(f'unknown config argument {arg!r} (use paper or tiny)')
  return c
