"""SwinMM pre-training of the 3-D Swin-T (the paper's Table 2 row "SwinT / SwinMM", Table 5's
SwinMM row).

  python -m osteojax.main --config configs/swinmm.py --workdir runs/swinmm
  python -m osteojax.main --config configs/finetune.py --workdir runs/swinmm_ft \
      --config.model.name=swin3d --config.init.checkpoint=runs/swinmm --config.loss.bmd=0 \
      --config.loss.level=0 --config.head.moe=False --config.score=prob   # class loss, one head

Same data, batch, optimiser and budget as configs/tp_swav.py (the paper trains every
pre-training method with one recipe), the encoder `model.swin` (slim: feature size 24, window
4; `:paper` Swin-UNETR's encoder), except the learning rate: 1e-4, the paper's for
transformers, also on CPU (Swin-T TP-SwAV at the CPU 1e-3 was reported to diverge; not rerun
here). SwinMM's own settings (its public code: osteojax/diagnosis/pretrain_swinmm.py): half of
the mask cubes masked, cubes of 8 voxels at 32^3 (the code's 16 at 64^3: 4^3 cubes either
way), reconstruction targets standardised per volume, NT-Xent temperature 0.5, a 512-d
contrastive embedding, weight 1 on each of the four losses.
"""
import os
import sys

import ml_collections

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tp_swav  # noqa: E402


def get_config(arg=None):
  c = tp_swav.get_config(arg)
  c.task = 'swinmm'
  del c['views'], c['swav']
  c.model.name = 'swin3d'
  c.optim.lr = 1e-4
  c.swinmm = ml_collections.ConfigDict(dict(
      mask_ratio=0.5, mask_patch=8, norm_target=True, contrast_dim=512, temperature=0.5,
      weights=dict(rotation=1.0, contrast=1.0, recon=1.0, mutual=1.0)))
  if arg == 'paper':
    c.swinmm.mask_patch = 16
  elif arg == 'tiny':
    c.swinmm.mask_patch, c.swinmm.contrast_dim = 4, 16
  return c
