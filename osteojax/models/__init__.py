"""Encoders chosen by config.model.name, heads, the device-gated MoE, the aligner's encoders."""
from osteojax.errors import ConfigError

ENCODERS = ('resnet3d', 'swin3d')


def encoder_from_config(c):
  """The 3-D encoder named by config.model: 'resnet3d' (its fields at the top level of
  config.model) or 'swin3d' (config.model.swin). Both map [B, D, H, W, 1] to [B, F]."""
  if c.name == 'resnet3d':
    from osteojax.models import resnet3d
    return resnet3d.encoder_from_config(c)
  if c.name == 'swin3d':
    from osteojax.models import swin3d
    return swin3d.encoder_from_config(c.swin)
  raise ConfigError(f'unknown config.model.name {c.name!r} (known: {", ".join(ENCODERS)})')
