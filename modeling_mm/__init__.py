"""The mm model family: per-modality towers, the joint-embedding MMModel, the captioning MMForConditionalGeneration and the
fusion classifier MMForClassification."""

from .modeling_mm import MMModel, MMOutput
from .modeling_mm_audio import MMAudioModel
from .modeling_mm_fusion import MMClassifierOutput, MMForClassification
from .modeling_mm_generation import MMForConditionalGeneration, MMGenerationOutput
from .modeling_mm_text import MMTextModel
from .modeling_mm_utils import MMPreTrainedModel, save_remote_code
from .modeling_mm_vision import MMVisionModel

__all__ = [
    "MMModel",
    "MMOutput",
    "MMForConditionalGeneration",
    "MMGenerationOutput",
    "MMForClassification",
    "MMClassifierOutput",
    "MMTextModel",
    "MMVisionModel",
    "MMAudioModel",
    "MMPreTrainedModel",
    "save_remote_code",
]
