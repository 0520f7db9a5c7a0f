"""The mm model family: per-modality towers, the joint-embedding MMModel, the captioning MMForConditionalGeneration
and the text-to-speech MMForTextToSpeech.

Importing it registers the classes with transformers' Auto classes, so a saved mm folder loads with
`AutoModel.from_pretrained(folder)` without `trust_remote_code` where mm is installed. A checkpoint still loads its
own remote code with `trust_remote_code=True` (transformers prefers the checkpoint's code then), and that remains
the path on machines without mm.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForAudioClassification,
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
    AutoModelForTextToWaveform,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoModelForSpeechSeq2Seq,
    AutoModelForZeroShotImageClassification,
)

from configuration_mm import MMAudioConfig, MMConfig, MMDecoderConfig, MMTextConfig, MMVisionConfig

from .modeling_mm import MMModel, MMOutput
from .modeling_mm_audio import MMAudioModel
from .modeling_mm_decoder import MMTextDecoder
from .modeling_mm_fusion import MMClassifierOutput, MMForClassification
from .modeling_mm_generation import MMForConditionalGeneration, MMGenerationOutput
from .modeling_mm_speech import MMForTextToSpeech, MMSpeechOutput, MMTextToSpeechOutput
from .modeling_mm_text import MMTextModel
from .modeling_mm_utils import MMPreTrainedModel, save_remote_code
from .modeling_mm_vision import MMVisionModel

__all__ = [
    "MMModel",
    "MMOutput",
    "MMForConditionalGeneration",
    "MMGenerationOutput",
    "MMForTextToSpeech",
    "MMSpeechOutput",
    "MMTextToSpeechOutput",
    "MMForClassification",
    "MMClassifierOutput",
    "MMTextModel",
    "MMVisionModel",
    "MMAudioModel",
    "MMPreTrainedModel",
    "save_remote_code",
]


def _register_auto_classes():
    """The Auto classes of `configuration_mm.AUTO_MAP` (those this transformers has), plus each tower on its own."""
    for config_class in (MMConfig, MMTextConfig, MMVisionConfig, MMAudioConfig, MMDecoderConfig):
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
    for config_class, model_class in (
        (MMConfig, MMModel),
        (MMTextConfig, MMTextModel),
        (MMVisionConfig, MMVisionModel),
        (MMAudioConfig, MMAudioModel),
        (MMDecoderConfig, MMTextDecoder),
    ):
        AutoModel.register(config_class, model_class, exist_ok=True)
    AutoModelForZeroShotImageClassification.register(MMConfig, MMModel, exist_ok=True)
    for auto_class in (AutoModelForImageTextToText, AutoModelForSpeechSeq2Seq, AutoModelForCausalLM):
        auto_class.register(MMConfig, MMForConditionalGeneration, exist_ok=True)
    for auto_class in (
        AutoModelForSequenceClassification,
        AutoModelForImageClassification,
        AutoModelForAudioClassification,
    ):
        auto_class.register(MMConfig, MMForClassification, exist_ok=True)
    AutoModelForTextToWaveform.register(MMConfig, MMForTextToSpeech, exist_ok=True)


_register_auto_classes()
