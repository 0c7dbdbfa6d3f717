"""GLCM texture maps (pyradiomics voxel-based parity) and the texture pool."""

from osteojax.texture.glcm import (FEATURES, GLCMMaps, discretize, glcm_angles, glcm_maps,
                                   glcm_maps_batch, kernel_crop_box)
from osteojax.texture.settings import GLCMSettings
from osteojax.texture.pool import normalize_pool, texture_maps, texture_pools
