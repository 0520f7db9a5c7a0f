"""Configurations of the mm model family."""

from .configuration_mm import (
    PRESETS,
    MMAudioConfig,
    MMConfig,
    MMDecoderConfig,
    MMSpeechConfig,
    MMTextConfig,
    MMVisionConfig,
)

__all__ = [
    "MMConfig", "MMTextConfig", "MMVisionConfig", "MMAudioConfig", "MMDecoderConfig", "MMSpeechConfig", "PRESETS",
]  # fmt: skip
