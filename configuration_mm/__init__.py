"""Configurations of the mm model family."""

from .configuration_mm import PRESETS, MMAudioConfig, MMConfig, MMDecoderConfig, MMTextConfig, MMVisionConfig

__all__ = ["MMConfig", "MMTextConfig", "MMVisionConfig", "MMAudioConfig", "MMDecoderConfig", "PRESETS"]
