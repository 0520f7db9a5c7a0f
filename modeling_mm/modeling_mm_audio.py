"""Audio tower: log-mel frames -> Whisper's convolutional stem (2x down-sampling in time) -> a transformer,
mean pooling over the frames that are not padding."""

import torch
from torch import nn
from transformers.utils import can_return_tuple

from .modeling_mm_layers import MMTowerModel
from .modeling_mm_utils import MMAudioConfig


class MMAudioEmbeddings(nn.Module):
    def __init__(self, config):
        super().__init__()
        # Two 1-D convolutions as in Whisper (modeling_whisper.WhisperEncoder): local context, then stride 2.
        self.conv1 = nn.Conv1d(config.num_mel_bins, config.hidden_size, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(config.hidden_size, config.hidden_size, kernel_size=3, stride=2, padding=1)
        self.position_embedding = nn.Embedding(config.max_source_positions, config.hidden_size)
        self.register_buffer(
            "position_ids", torch.arange(config.max_source_positions).expand((1, -1)), persistent=False
        )

    def forward(self, input_features, frame_mask=None):
        features = input_features.to(self.conv1.weight.dtype)  # (B, n_mels, T)
        # Zero the padded frames before each convolution so the last real frames see the same zeros a clip on
        # its own sees at its edge: an item's embedding must not depend on its batch's padding.
        keep = 1.0 if frame_mask is None else frame_mask[:, None, :].to(features.dtype)
        hidden_states = nn.functional.gelu(self.conv1(features * keep)) * keep
        hidden_states = nn.functional.gelu(self.conv2(hidden_states)).transpose(1, 2)  # (B, ceil(T/2), D)
        length = hidden_states.shape[1]
        max_length = self.position_embedding.num_embeddings
        if length > max_length:
            raise ValueError(
                f"Audio of {input_features.shape[-1]} frames is too long for this model: at most "
                f"{2 * max_length} frames ({2 * max_length / 100:.2f} s at 10 ms per frame). Let the feature "
                f"extractor truncate (max_length={2 * max_length}) or split the clip."
            )
        return hidden_states + self.position_embedding(self.position_ids[:, :length])


class MMAudioModel(MMTowerModel):
    """The audio tower on its own.

    Example:
    ```python
    >>> import torch
    >>> from configuration_mm import MMConfig
    >>> from modeling_mm import MMAudioModel
    >>> model = MMAudioModel(MMConfig.from_preset("tiny").audio_config)
    >>> model(input_features=torch.randn(2, 32, 50)).last_hidden_state.shape  # 50 frames -> 25 positions
    torch.Size([2, 25, 32])
    ```
    """

    config_class = MMAudioConfig
    main_input_name = "input_features"
    input_modalities = ("audio",)

    def __init__(self, config):
        super().__init__(config)
        self.embeddings = MMAudioEmbeddings(config)
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.conv1

    @can_return_tuple
    def forward(
        self, input_features, audio_attention_mask=None, output_attentions=None, output_hidden_states=None, **kwargs
    ):
        """`input_features` (B, n_mels, T) and the per-frame `audio_attention_mask` (B, T) ->
        `BaseModelOutputWithPooling` over ceil(T/2) positions."""
        embeddings = self.embeddings(input_features, audio_attention_mask)
        # The stem keeps every second frame (stride 2, padding 1): position i covers frame 2i.
        padding_mask = None if audio_attention_mask is None else audio_attention_mask[:, ::2]
        return self.encode(embeddings, padding_mask, output_attentions, output_hidden_states)
