"""TP-SwAV pre-training: views drawn from each vertebra's texture pool (the paper's method).

  python -m osteojax.main --config configs/tp_swav.py --workdir runs/tp_swav
  python -m osteojax.main --config configs/tp_swav.py:paper --workdir runs/tp_swav_paper

The default is sized for a 2-core CPU and the default OsteoSim data (slim ResNet34-3D, 32^3);
`:paper` gives the paper's values (ResNet34-3D, batch 32, AdamW lr 1e-4, weight decay 0.1,
100 warm-up of 300 epochs) on the full-size data set, for accelerators. `:tiny` is for tests.
Where the paper is silent we follow SwAV (facebookresearch/swav): epsilon 0.05, temperature
0.1, prototypes frozen for the first epoch, a queue of earlier embeddings when the batch is
small (codes over queue + batch), no zero-initialised residual branches; we run Sinkhorn to a
1e-4 marginal tolerance (at most 50 iterations) instead of SwAV's 3 iterations. The warm-up is
the paper's third of the schedule. The CPU budget (2 epochs, 94 steps) was chosen from the
linear-probe learning curve on the validation folds (docs/diagnosis.md, "Recipe choices";
tools/probe_curve.py): the probe AUC peaks there and falls with longer pre-training. The CPU
learning rate, 1e-3, is the fine-tuning one (not swept: the paper's 1e-4 is for 300 epochs).
"""
import os
import sys

import ml_collections

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import osteosim  # noqa: E402  (configs are plain files, not a package)


def encoder_config(arg=None) -> ml_collections.ConfigDict:
  """The encoder shared by pre-training and fine-tuning (they must match).

  name 'resnet3d' (ResNet34-3D; its fields at this level), 'swin3d' (3-D Swin-T as in
  Swin-UNETR's encoder, the fields of `swin`; `--config.model.name=swin3d`), 'vit3d' (ViT,
  MAE's encoder, the fields of `vit`) or 'nnformer3d' (nnFormer's encoder, Alice's backbone,
  the fields of `nnformer`).
  """
  m = ml_collections.ConfigDict(dict(
      name='resnet3d', stage_sizes=(3, 4, 6, 3), widths=(16, 32, 64, 128), stem_stride=2,
      stem_pool=True, zero_init_residual=False,
      conv='auto',    # Conv3D: 'auto' (im2col on CPU, XLA's on GPU/TPU) | 'lax' | 'im2col'
      # Swin-T, slim CPU variant: the paper's depths, half its width (heads of 24 channels),
      # a window of 4 that tiles the 16^3 token grid of a 32^3 ROI (7 would pad it to 21^3)
      swin=dict(feature_size=24, depths=(2, 2, 2, 2), heads=(1, 2, 4, 8), window=4,
                patch_size=2),
      # ViT (MAE's encoder), slim CPU variant: 8^3 patches (64 tokens at 32^3, as ViT-B's 16^3
      # patches give at 64^3), ViT-Tiny's width 192 and 3 heads, half its depth
      vit=dict(patch_size=8, dim=192, depth=6, heads=3),
      # nnFormer's encoder, slim CPU variant: the paper's depths, a quarter of its width (heads
      # of 24 channels), patch 2 at 32^3: token grids 16-8-4-2, LV-MSA windows 4-4-8 (8 covers
      # the 4^3 grid, as the code's stage 3 window its 8^3 grid), GV-MSA in the last stage
      nnformer=dict(embed_dim=24, depths=(2, 2, 2, 2), heads=(1, 2, 4, 8), windows=(4, 4, 8),
                    patch_size=2)))
  if arg == 'paper':
    m.widths = (64, 128, 256, 512)
    m.swin.feature_size, m.swin.heads, m.swin.window = 48, (3, 6, 12, 24), 7   # Swin-UNETR's
    m.vit.patch_size, m.vit.dim, m.vit.depth, m.vit.heads = 16, 768, 12, 12    # ViT-B
    m.nnformer.embed_dim, m.nnformer.heads = 96, (3, 6, 12, 24)   # nnFormer (Synapse), 64^3
  elif arg == 'tiny':
    m.stage_sizes, m.widths, m.stem_pool = (1, 1), (4, 8), False
    m.swin.feature_size, m.swin.depths, m.swin.heads, m.swin.window = 8, (1, 1), (1, 2), 2
    m.vit.patch_size, m.vit.dim, m.vit.depth, m.vit.heads = 4, 16, 1, 2
    m.nnformer.embed_dim, m.nnformer.depths, m.nnformer.heads = 8, (2, 1), (1, 2)
    m.nnformer.windows = (2,)
  return m


def get_config(arg=None):
  if arg not in (None, '', 'tiny', 'paper'):
    raise ValueError(f'unknown config argument {arg!r} (use paper or tiny)')
  c = ml_collections.ConfigDict()
  c.task = 'tp_swav'
  c.views = 'pool'            # 'pool': TP-SwAV views; 'crops': SwAV random crops
  c.seed = 0                  # model init, batch order, augmentations (not the data)
  c.batch_size = 32           # global batch, split over devices
  c.epochs = 2                # CPU budget: the peak of the probe learning curve (docs/diagnosis.md)
  c.log_every = 10
  c.ckpt_every = 47           # about one epoch of the default data
  c.keep_checkpoints = 3      # newest checkpoints kept (tools/probe_curve.py keeps them all)
  c.data = osteosim.data_config(arg)
  c.model = encoder_config(arg)
  c.swav = ml_collections.ConfigDict(dict(
      num_views=2, hidden_dim=256, proj_dim=64, num_prototypes=32, temperature=0.1,
      epsilon=0.05, sinkhorn_iterations=50, sinkhorn_threshold=1e-4,
      freeze_prototypes_epochs=1.0,   # SwAV: prototypes fixed during the first epoch
      queue_length=256,               # earlier global-batch embeddings per view (0: no queue)
      queue_start_epochs=0.0,         # used from the first step it is full (and not before)
      flip_prob=0.5,
      intensity='scanner',            # augment.INTENSITY_MODES (HU, bounded by the scanners)
      crop_min=0.6,                   # SwAV views: global crop edge fraction U(crop_min, 1)
      small_crops=0,                  # SwAV multi-crop: small crops per vertebra (SwAV config)
      small_crop_size=0.5,            # their edge, as a fraction of the ROI edge
      small_crop_range=(0.3, 0.6)))   # their crop edge fraction
  c.optim = ml_collections.ConfigDict(dict(
      lr=1e-3, b1=0.9, b2=0.999, weight_decay=0.1, warmup_epochs=2 / 3, decay='cosine'))
  if arg == 'paper':
    c.epochs, c.optim.lr, c.optim.warmup_epochs = 300, 1e-4, 100
    c.swav.hidden_dim, c.swav.proj_dim, c.swav.num_prototypes = 2048, 128, 300
    c.swav.queue_length, c.swav.queue_start_epochs = 3840, 15
    c.log_every, c.ckpt_every = 50, 1000
  elif arg == 'tiny':
    c.swav.hidden_dim, c.swav.proj_dim, c.swav.num_prototypes = 16, 8, 6
    c.swav.freeze_prototypes_epochs, c.swav.queue_length = 0.5, 16
    c.batch_size, c.epochs, c.log_every, c.ckpt_every = 8, 2, 1, 2
    c.optim.warmup_epochs = 1
  return c
