"""SwAV baseline: the TP-SwAV setup with views from random zoomed crops of the original volume.

  python -m osteojax.main --config configs/swav.py --workdir runs/swav
Same encoder, heads, loss, optimiser and budget as configs/tp_swav.py (and the same :paper /
:tiny arguments); only the views differ.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tp_swav  # noqa: E402


def get_config(arg=None):
  c = tp_swav.get_config(arg)
  c.task = 'swav'
  c.views = 'crops'
  return c
