"""VoCo pre-training of the ResNet34-3D (the paper's Table 2 row "ResNet34 / VoCo").

  python -m osteojax.main --config configs/voco.py --workdir runs/voco
  python -m osteojax.main --config configs/finetune.py --workdir runs/voco_ft \
      --config.init.checkpoint=runs/voco --config.loss.bmd=0 --config.loss.level=0 \
      --config.head.moe=False --config.score=prob            # the row: class loss, one head

Same data, batch, optimiser, budget and encoder as configs/tp_swav.py (the paper trains every
pre-training method with one recipe; slim ResNet34-3D on CPU, the paper's at `:paper`). VoCo's
own settings (osteojax/diagnosis/pretrain_voco.py says why): a 2 x 2 x 2 grid of base crops
(16^3 on the 32^3 ROI), 4 random crops of that size per vertebra (12 crops of 16^3 cost 1.5
forward passes of the ROI, TP-SwAV's two views 2), each flipped with VoCo's probability 0.2
per axis; the projection MLP two hidden layers wide (CPU 256, output 64; `:paper` VoCo's 2048
and 2048); the regularisation loss with VoCo's weight 1.
"""
import os
import sys

import ml_collections

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tp_swav  # noqa: E402


def get_config(arg=None):
  c = tp_swav.get_config(arg)
  c.task = 'voco'
  del c['views'], c['swav']
  c.voco = ml_collections.ConfigDict(dict(
      grid=2,             # base crops per axis: they tile the ROI, grid^3 of them
      num_crops=4,        # random crops (base-crop shape, anywhere in the ROI) per vertebra
      hidden_dim=256, proj_dim=64, reg_weight=1.0, flip_prob=0.2))
  if arg == 'paper':
    c.voco.hidden_dim, c.voco.proj_dim = 2048, 2048
  elif arg == 'tiny':
    c.voco.hidden_dim, c.voco.proj_dim, c.voco.num_crops = 16, 8, 2
  return c
