"""Configurations of the mm model family."""

from .configuration_mm import (
    PRESETS,
    MMAudioConfig,
    MMConfig,
    MMDecoderConfig,
    MMFusionConfig,
    MMSpeechConfig,
    MMTextConfig,
    MMVisionConfig,
)

__all__ = [
    "MMConfig", "MMTextConfig", "MMVisionConfig", "MMAudioConfig", "MMDecoderConfig", "MMFusionConfig",
    "MMSpeechConfig", "PRESETS",
]  # fmt: skip
