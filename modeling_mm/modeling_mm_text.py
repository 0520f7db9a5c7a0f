"""Text tower: token + learned position embeddings, a bidirectional transformer, mean pooling over real tokens."""

from typing import TYPE_CHECKING

import torch
from torch import nn
from transformers.utils import can_return_tuple

from .modeling_mm_layers import MMTowerModel
from .modeling_mm_utils import MMTextConfig

if TYPE_CHECKING:  # never executed: see DIFFUSERS_CLOSURE below
    from .configuration_mm import MMConfig  # noqa: F401
    from .modeling_mm import MMModel  # noqa: F401
    from .feature_extraction_mm import read_audio  # noqa: F401
    from .modeling_mm_audio import MMAudioModel  # noqa: F401
    from .modeling_mm_audio_adapter import encode_audio  # noqa: F401
    from .modeling_mm_decoder import MMTextDecoder  # noqa: F401
    from .modeling_mm_fusion import MMForClassification  # noqa: F401
    from .modeling_mm_generation import MMForConditionalGeneration  # noqa: F401
    from .modeling_mm_griffin_lim import MMMelSpectrogram  # noqa: F401
    from .modeling_mm_long_attention import LONG_INPUT_ATTENTION_FUNCTIONS  # noqa: F401
    from .modeling_mm_losses import hash_powers  # noqa: F401
    from .modeling_mm_speech import MMForTextToSpeech  # noqa: F401
    from .modeling_mm_vision import MMVisionModel  # noqa: F401
    from .pipeline_mm import MMImageToTextPipeline  # noqa: F401
    from .pipeline_mm_classification import MMClassificationPipeline  # noqa: F401
    from .pipeline_mm_text_to_speech import MMTextToSpeechPipeline  # noqa: F401
# DIFFUSERS_CLOSURE: the text tower is the `text_encoder` of the diffusers text-to-image pipeline, where diffusers loads
# it as a custom component from `text_encoder/modeling_mm_text.py`, copying into its module cache only the files this
# file imports relatively (found by a regex, so also inside `if TYPE_CHECKING:`), not their own imports. The imports
# above put every remote-code file there, so the tower imports and a loaded pipeline saves again.


class MMTextEmbeddings(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.register_buffer(
            "position_ids", torch.arange(config.max_position_embeddings).expand((1, -1)), persistent=False
        )

    def forward(self, input_ids):
        seq_length = input_ids.shape[-1]
        max_length = self.position_embedding.num_embeddings
        if seq_length > max_length:
            raise ValueError(
                f"Text of {seq_length} tokens is longer than the model's max_position_embeddings ({max_length}). "
                f"Tokenize with truncation=True, max_length={max_length} (the MMProcessor default)."
            )
        return self.token_embedding(input_ids) + self.position_embedding(self.position_ids[:, :seq_length])


class MMTextModel(MMTowerModel):
    """The text tower on its own.

    Example:
    ```python
    >>> import torch
    >>> from configuration_mm import MMConfig
    >>> from modeling_mm import MMTextModel
    >>> model = MMTextModel(MMConfig.from_preset("tiny").text_config)
    >>> out = model(input_ids=torch.tensor([[1, 5, 9, 2]]))
    >>> out.last_hidden_state.shape, out.pooler_output.shape
    (torch.Size([1, 4, 32]), torch.Size([1, 32]))
    ```
    """

    config_class = MMTextConfig
    main_input_name = "input_ids"
    input_modalities = ("text",)

    def __init__(self, config):
        super().__init__(config)
        self.embeddings = MMTextEmbeddings(config)
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.token_embedding

    def set_input_embeddings(self, value):
        self.embeddings.token_embedding = value

    @can_return_tuple
    def forward(self, input_ids, attention_mask=None, output_attentions=None, output_hidden_states=None, **kwargs):
        """`input_ids` (B, L) and `attention_mask` (B, L, 1 = real token) -> `BaseModelOutputWithPooling`."""
        return self.encode(self.embeddings(input_ids), attention_mask, output_attentions, output_hidden_states)
