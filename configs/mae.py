"""MAE pre-training of the 3-D ViT (the paper's Table 2 row "ViT / MAE").

  python -m osteojax.main --config configs/mae.py --workdir runs/mae
  python -m osteojax.main --config configs/finetune.py --workdir runs/mae_ft \
      --config.model.name=vit3d --config.init.checkpoint=runs/mae --config.loss.bmd=0 \
      --config.loss.level=0 --config.head.moe=False --config.score=prob   # class loss, one head

Same data, batch, optimiser and budget as configs/tp_swav.py (the paper trains every
pre-training method with one recipe), the encoder `model.vit` (slim: 8^3 patches, width 192,
depth 6; `:paper` ViT-B: 16^3 patches at 64^3, width 768, depth 12). MAE's own settings: 75%
of the patches masked, a light decoder (CPU: width 128, depth 2, 4 heads; `:paper` MAE's
512, 8, 16), the loss on per-patch normalised voxels of the masked patches; random flips as
its only augmentation (MAE's crop would cut the vertebra, flips keep every voxel).
"""
import os
import sys

import ml_collections

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tp_swav  # noqa: E402


def get_config(arg=None):
  c = tp_swav.get_config(arg)
  c.task = 'mae'
  del c['views'], c['swav']
  c.model.name = 'vit3d'
  c.mae = ml_collections.ConfigDict(dict(
      mask_ratio=0.75, decoder_dim=128, decoder_depth=2, decoder_heads=4, flip_prob=0.5))
  if arg == 'paper':
    c.mae.decoder_dim, c.mae.decoder_depth, c.mae.decoder_heads = 512, 8, 16
  elif arg == 'tiny':
    c.mae.decoder_dim, c.mae.decoder_depth, c.mae.decoder_heads = 16, 1, 2
  return c
