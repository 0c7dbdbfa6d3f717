"""SwAV baseline: the TP-SwAV setup with views from random crops of the original volume.

  python -m osteojax.main --config configs/swav.py --workdir runs/swav
Same encoder, heads, loss, queue, optimiser and budget as configs/tp_swav.py (and the same
:paper / :tiny arguments); the views are SwAV's multi-crop: 2 global crops (edge fraction
U(0.6, 1), full size) that give the codes, and small crops (edge fraction U(0.3, 0.6), zoomed to
half the ROI edge) that only predict them: 4 on the CPU default, 6 at :paper (SwAV's 2 x 224 +
6 x 96).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tp_swav  # noqa: E402


def get_config(arg=None):
  c = tp_swav.get_config(arg)
  c.task = 'swav'
  c.views = 'crops'
  c.swav.small_crops = {'paper': 6, 'tiny': 2}.get(arg, 4)
  return c
