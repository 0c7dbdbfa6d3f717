"""nnFormer's encoder (Zhou et al. 2021/2023, "nnFormer: Volumetric Medical Image Segmentation
via a 3D Transformer") in Flax, ending in a pooled feature for classification.

nnFormer interleaves convolution and self-attention:
- Embedding: not one patch convolution but two stacked pairs of small convolutions (3^3, bias,
  GELU and LayerNorm between them), 1 -> C/2 with stride 2, then C/2 -> C with stride
  patch_size / 2, then LayerNorm (the code's PatchEmbed of `project` blocks; the second pair
  ends in its convolution).
- Stages of local volume-based self-attention (LV-MSA): Swin blocks whose windows are cubes
  of `windows[i]` tokens, every second block shifted by half a window with the shift's
  attention mask (swin3d.SwinBlock3D, reused; relative position bias, pre-norm, MLP ratio 4).
- Down-sampling between stages by a strided convolution instead of patch merging: GELU,
  LayerNorm, 3^3 convolution with stride 2 and padding 1, C -> 2C (the code's PatchMerging):
  a grid g becomes (g + 1) // 2.
- Global volume-based self-attention (GV-MSA) in the bottleneck, here the last stage: every
  token attends to every token of the volume, with a relative position bias over the whole
  grid (its table has (2g - 1)^3 rows for a g^3 grid). In the code this is the window
  attention of the deepest stages, whose window equals their resolution; here the last stage
  is global whatever the input size.
- The classification feature: LayerNorm of the last stage (the code's norm3, whose output
  Alice's code also pools) and the mean over its grid: [B, D, H, W, 1] ->
  [B, 2^(stages - 1) * embed_dim]. The code's per-stage norms of the other stages only feed
  its decoder's skips and are left out. No BatchNorm, no dropout, no stochastic depth.

Details from the public code (282857341/nnFormer, network_architecture/nnFormer_synapse.py;
Alice's models/nnFormer.py is the same encoder plus an absolute position embedding, see below):
GELU exact (erf), LayerNorm eps 1e-5,
convolutions padded 1 on both sides as PyTorch's (resnet3d.Conv3D(padding=1)), biased; a
window not shorter than the grid's shortest axis is clipped to it and not shifted. Two
differences: the relative position index is Swin's, one table row per offset (the code scales
the first axis by 3w - 1 instead of (2w - 1)^2, so that different offsets share rows; the table
has the same size), and an input not a multiple of patch_size is refused instead of padded.
Initialisers are Flax's defaults, except the convolution biases: PyTorch's (BiasConv3D,
swin3d.torch_bias_init).
No absolute position embedding (as nnFormer_synapse.py): Alice's encoder (its Encoder's
ape=True) adds one to the embedded tokens, a sine-cosine table that its trunc_normal_ then
overwrites in place with N(0, 0.02^2) draws, held as a plain tensor (not a parameter or a
buffer: never trained, not in its checkpoints, drawn separately for its student and teacher);
ours has none, for Alice's pre-training too.

Paper size (`:paper`): embedding dimension 96, depths 2-2-2-2, heads 3-6-12-24, LV-MSA windows
4-4-8 (GV-MSA last), patch 2 at 64^3 (Alice's patch at its 64^3 crops): token grids
32-16-8-4, the layout of the code's Synapse encoder (64x128x128 crops, patch 2x4x4); the stage
3 window of 8 covers its whole 8^3 grid, as there. The public code's Synapse trainer uses
embedding 192 and heads 6-12-24-48 (config values). The slim CPU variant (embedding 24, heads
1-2-4-8: 24 channels a head, windows 4-4-8, patch 2 at 32^3: grids 16-8-4-2) keeps the depth
and the block structure.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from osteojax.errors import ConfigError
from osteojax.models import resnet3d, swin3d, vit3d

LN_EPS = swin3d.LN_EPS     # torch.nn.LayerNorm's, as in nnFormer


def gelu(x):
  return nn.gelu(x, approximate=False)      # torch.nn.GELU's default


class BiasConv3D(nn.Module):
  """PyTorch's Conv3d(k, stride, padding=(k - 1) // 2) with a bias: resnet3d.Conv3D
  ('kernel', computed the backend's fastest way) + 'bias', initialised as PyTorch's. A zero
  bias would not do: over the ROI's zero background every embedding LayerNorm would see an
  exactly constant vector, where its gradient is 1 / sqrt(eps) (316) times larger, and the
  first gradients of Alice's losses overflowed (tiny OsteoSim, float32)."""
  features: int
  kernel_size: int = 3
  stride: int = 1
  impl: str = 'auto'

  @nn.compact
  def __call__(self, x):
    y = resnet3d.Conv3D(self.features, self.kernel_size, self.stride, self.impl,
                        padding=(self.kernel_size - 1) // 2, name='conv')(x)
    fan_in = x.shape[-1] * self.kernel_size ** 3
    return y + self.param('bias', swin3d.torch_bias_init(fan_in), (self.features,))


class Project(nn.Module):
  """nnFormer's embedding block: conv (stride) -> GELU -> LN -> conv -> [GELU -> LN]."""
  features: int
  stride: int
  last: bool = False
  impl: str = 'auto'

  @nn.compact
  def __call__(self, x):
    x = BiasConv3D(self.features, 3, self.stride, self.impl, name='conv1')(x)
    x = nn.LayerNorm(LN_EPS, name='norm1')(gelu(x))
    x = BiasConv3D(self.features, 3, 1, self.impl, name='conv2')(x)
    if not self.last:
      x = nn.LayerNorm(LN_EPS, name='norm2')(gelu(x))
    return x


class Downsample(nn.Module):
  """nnFormer's down-sampling (its PatchMerging): GELU -> LN -> 3^3 conv, stride 2, C -> 2C."""
  impl: str = 'auto'

  @nn.compact
  def __call__(self, x):
    x = nn.LayerNorm(LN_EPS, name='norm')(gelu(x))
    return BiasConv3D(2 * x.shape[-1], 3, 2, self.impl, name='reduction')(x)


def gv_msa_block(dim: int, heads: int, grid: Sequence[int], name: str,
                 mlp_ratio: float = 4.0) -> swin3d.SwinBlock3D:
  """A GV-MSA block: a Swin block whose one window is the whole grid (never shifted)."""
  return swin3d.SwinBlock3D(dim, heads, max(grid), shifted=False, mlp_ratio=mlp_ratio, name=name)


def lv_msa_block(dim: int, heads: int, window: int, grid: Sequence[int], shifted: bool,
                 name: str, mlp_ratio: float = 4.0) -> swin3d.SwinBlock3D:
  """An LV-MSA block; as nnFormer's code, a window not shorter than the grid's shortest axis is
  clipped to it and then not shifted."""
  if min(grid) <= window:
    window, shifted = min(grid), False
  return swin3d.SwinBlock3D(dim, heads, window, shifted=shifted, mlp_ratio=mlp_ratio, name=name)


def check_sizes(depths, heads, windows, patch_size):
  """ConfigError (one line) unless there is a head count per stage, a window per stage but the
  last, and the patch is 2 or 4 (the embedding's strides 2 and patch_size / 2)."""
  if patch_size not in (2, 4):
    raise ConfigError(f'nnformer patch_size must be 2 or 4, got {patch_size}')
  if len(heads) != len(depths) or len(windows) != len(depths) - 1 or not depths:
    raise ConfigError(f'nnformer needs one head count per stage and one window per stage but '
                      f'the last (GV-MSA): depths {tuple(depths)}, heads {tuple(heads)}, '
                      f'windows {tuple(windows)}')


class NNFormer3D(nn.Module):
  """nnFormer's encoder: [B, D, H, W, C] -> pooled features [B, 2^(len(depths)-1) embed_dim].

  windows: the LV-MSA window of each stage but the last (GV-MSA). Each axis of the input must be
  a multiple of patch_size (2 or 4). `features(x)` gives every stage's output (the last one
  after the final LayerNorm) for pre-training decoders.
  """
  embed_dim: int = 96
  depths: Sequence[int] = (2, 2, 2, 2)
  heads: Sequence[int] = (3, 6, 12, 24)
  windows: Sequence[int] = (4, 4, 8)
  patch_size: int = 2
  mlp_ratio: float = 4.0
  conv: str = 'auto'            # resnet3d.Conv3D's impl

  @nn.compact
  def features(self, x):
    """[stage 1 output, ..., LayerNorm(last stage output)], each [B, g, g, g, C_i]."""
    check_sizes(self.depths, self.heads, self.windows, self.patch_size)
    p = self.patch_size
    if any(s % p for s in x.shape[1:4]):
      raise ValueError(f'input {x.shape[1:4]} is not a multiple of the patch size {p}')
    x = Project(self.embed_dim // 2, 2, impl=self.conv, name='embed1')(x)
    x = Project(self.embed_dim, p // 2, last=True, impl=self.conv, name='embed2')(x)
    x = nn.LayerNorm(LN_EPS, name='embed_norm')(x)
    outs = []
    last = len(self.depths) - 1
    for i, (depth, heads) in enumerate(zip(self.depths, self.heads)):
      grid, dim = x.shape[1:4], x.shape[-1]
      for j in range(depth):
        name = f'stage{i + 1}_block{j + 1}'
        block = (gv_msa_block(dim, heads, grid, name, self.mlp_ratio) if i == last else
                 lv_msa_block(dim, heads, self.windows[i], grid, j % 2 == 1, name,
                              self.mlp_ratio))
        x = block(x)
      outs.append(x)
      if i < last:
        x = Downsample(self.conv, name=f'stage{i + 1}_down')(x)
    outs[-1] = nn.LayerNorm(LN_EPS, name='norm')(outs[-1])
    return outs

  def __call__(self, x, train: bool = True):
    del train                                   # no dropout, no BatchNorm
    return jnp.mean(self.features(x)[-1], axis=(1, 2, 3))


class DecoderStage(nn.Module):
  """nnFormer's first decoder stage, and one expansion from it to voxels, for pre-training.

  (features of NNFormer3D.features, output shape (D, H, W)) -> (decoder features
  [B, g, g, g, C], reconstruction [B, D, H, W, 1]). The bottleneck is expanded as the code's
  Patch_Expanding (LayerNorm, then a 2^3 transposed convolution with stride 2, C -> C/2: a
  Dense to 8 C/2 and depth-to-space), added to the previous stage's output (its own LayerNorm:
  the encoder's norm of that stage in the code), then `depth` LV-MSA blocks; the code's first
  block there is a skip attention (queries from the expanded, keys and values from the skip),
  here an ordinary block on the sum. The reconstruction is one Dense per token to f^3 voxels
  placed by depth-to-space (the code's final_patch_expanding, a transposed convolution with
  kernel = stride = f), straight from this stage instead of after two more decoder stages.
  """
  heads: int
  window: int
  depth: int = 2
  mlp_ratio: float = 4.0

  @nn.compact
  def __call__(self, feats, out_shape):
    x, skip = feats[-1], feats[-2]
    b, c, grid = x.shape[0], skip.shape[-1], skip.shape[1:4]
    f = out_shape[0] // grid[0]
    if any(o != f * g for o, g in zip(out_shape, grid)):
      raise ValueError(f'output {tuple(out_shape)} is not a multiple of the grid {grid}')
    y = nn.Dense(8 * c, name='up')(nn.LayerNorm(LN_EPS, name='up_norm')(x))
    y = vit3d.unpatchify(y.reshape(b, -1, 8 * c), 2, x.shape[1:4], c)
    y = y[:, :grid[0], :grid[1], :grid[2]] + nn.LayerNorm(LN_EPS, name='skip_norm')(skip)
    for j in range(self.depth):
      y = lv_msa_block(c, self.heads, self.window, grid, j % 2 == 1, f'block{j + 1}',
                       self.mlp_ratio)(y)
    voxels = nn.Dense(f ** 3, name='final')(y.reshape(b, -1, c))
    return y, vit3d.unpatchify(voxels, f, grid, 1)


def encoder_from_config(c) -> NNFormer3D:
  """NNFormer3D from config.model.nnformer (embed_dim, depths, heads, windows, patch_size)."""
  check_sizes(c.depths, c.heads, c.windows, c.patch_size)
  return NNFormer3D(c.embed_dim, tuple(c.depths), tuple(c.heads), tuple(c.windows),
                    c.patch_size)
