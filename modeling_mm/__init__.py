"""The mm model family: per-modality towers and the joint-embedding MMModel."""

from .modeling_mm import MMModel, MMOutput
from .modeling_mm_audio import MMAudioModel
from .modeling_mm_text import MMTextModel
from .modeling_mm_utils import MMPreTrainedModel, save_remote_code
from .modeling_mm_vision import MMVisionModel

__all__ = ["MMModel", "MMOutput", "MMTextModel", "MMVisionModel", "MMAudioModel", "MMPreTrainedModel", "save_remote_code"]
