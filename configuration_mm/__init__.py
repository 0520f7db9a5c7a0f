"""Configurations of the mm model family."""

from .configuration_mm import PRESETS, MMAudioConfig, MMConfig, MMTextConfig, MMVisionConfig

__all__ = ["MMConfig", "MMTextConfig", "MMVisionConfig", "MMAudioConfig", "PRESETS"]
