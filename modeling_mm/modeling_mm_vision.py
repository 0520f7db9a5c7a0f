"""Vision tower: a ViT over non-overlapping patches (a strided convolution), mean pooling over patches."""

import torch
from torch import nn
from transformers.utils import can_return_tuple

from .modeling_mm_layers import MMTowerModel
from .modeling_mm_utils import MMVisionConfig


class MMVisionEmbeddings(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.image_size = config.image_size
        self.patch_embedding = nn.Conv2d(
            config.num_channels, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size
        )
        self.position_embedding = nn.Embedding(config.num_patches, config.hidden_size)
        self.register_buffer("position_ids", torch.arange(config.num_patches).expand((1, -1)), persistent=False)

    def forward(self, pixel_values):
        if pixel_values.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(
                f"Expected pixel_values of {self.image_size}x{self.image_size} pixels, got "
                f"{tuple(pixel_values.shape[-2:])}. Preprocess images with the model's MMImageProcessor."
            )
        patches = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))  # (B, D, H/p, W/p)
        patches = patches.flatten(2).transpose(1, 2)  # (B, num_patches, D)
        return patches + self.position_embedding(self.position_ids)


class MMVisionModel(MMTowerModel):
    """The vision tower on its own.

    Example:
    ```python
    >>> import torch
    >>> from configuration_mm import MMConfig
    >>> from modeling_mm import MMVisionModel
    >>> model = MMVisionModel(MMConfig.from_preset("tiny").vision_config)
    >>> model(pixel_values=torch.randn(2, 3, 32, 32)).pooler_output.shape
    torch.Size([2, 32])
    ```
    """

    config_class = MMVisionConfig
    main_input_name = "pixel_values"
    input_modalities = ("image",)

    def __init__(self, config):
        super().__init__(config)
        self.embeddings = MMVisionEmbeddings(config)
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.patch_embedding

    @can_return_tuple
    def forward(self, pixel_values, output_attentions=None, output_hidden_states=None, **kwargs):
        """`pixel_values` (B, 3, H, W) -> `BaseModelOutputWithPooling` over the (H/p * W/p) patches."""
        return self.encode(self.embeddings(pixel_values), None, output_attentions, output_hidden_states)
