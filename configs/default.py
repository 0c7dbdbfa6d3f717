"""The embedded default job that `make run` runs.

At this stage of the project it generates the default OsteoSim data set (scale 0.05) and prints
its summary: patients and vertebrae per site and split, prevalence per DXA maker, and the
oracle ceiling per site.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import osteosim  # noqa: E402  (configs are plain files, not a package)


def get_config(arg=None):
  return osteosim.get_config(arg)
