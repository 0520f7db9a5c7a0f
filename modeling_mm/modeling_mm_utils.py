"""The base class of every mm model, and the saving of the Hub remote code that travels with its weights."""

import shutil
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init

from .modeling_mm_losses import hash_powers

try:  # flat Hub folder (remote code): the config file sits next to this one
    from .configuration_mm import MMAudioConfig, MMConfig, MMFusionConfig, MMTextConfig, MMVisionConfig
except ImportError:  # installed package: the config lives in the sibling package `configuration_mm`
    from configuration_mm import MMAudioConfig, MMConfig, MMFusionConfig, MMTextConfig, MMVisionConfig

__all__ = ["MMPreTrainedModel", "MMConfig", "MMTextConfig", "MMVisionConfig", "MMAudioConfig", "MMFusionConfig", "save_remote_code"]

# The files a consumer needs to load a saved model with `trust_remote_code=True`, by the package that holds them
# in this repository. They are copied flat into the saved folder (see ../shared/design.md: remote code is flat).
REMOTE_CODE_FILES = {
    "configuration_mm": ("configuration_mm.py",),
    "modeling_mm": (
        "modeling_mm_utils.py",
        "modeling_mm_layers.py",
        "modeling_mm_text.py",
        "modeling_mm_vision.py",
        "modeling_mm_audio.py",
        "modeling_mm_losses.py",
        "modeling_mm.py",
        "modeling_mm_decoder.py",
        "modeling_mm_generation.py",
        "modeling_mm_fusion.py",
    ),
    "processing_mm": ("pipeline_mm.py", "pipeline_mm_classification.py"),
}


def save_remote_code(folder):
    """Copies every remote-code file into `folder`, flat.

    Works from the installed packages and from a model that was itself loaded as remote code (then the files sit
    next to this one in transformers' module cache), so re-saving a loaded model keeps the folder loadable.
    """
    here = Path(__file__).resolve().parent
    for package, names in REMOTE_CODE_FILES.items():
        for name in names:
            source = here / name
            if not source.exists():
                source = here.parent / package / name
            if not source.exists():
                raise FileNotFoundError(
                    f"Cannot save the remote-code file {name!r}: it is neither next to {here} nor in "
                    f"{here.parent / package}. Reinstall mm (`pip install -e .`) or re-download the checkpoint."
                )
            shutil.copyfile(source, Path(folder) / name)


class MMPreTrainedModel(PreTrainedModel):
    """Handles weight initialisation, attention back-ends and saving (weights + remote code) for mm models."""

    config_class = MMConfig
    base_model_prefix = "mm"
    input_modalities = ("image", "text", "audio")
    supports_gradient_checkpointing = True
    _no_split_modules = ["MMEncoderLayer", "MMTextEmbeddings", "MMVisionEmbeddings", "MMAudioEmbeddings"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    @torch.no_grad()
    def _init_weights(self, module):
        std = getattr(self.config, "initializer_range", 0.02)
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        # Non-persistent buffers are not in the checkpoint: transformers 5 builds the model on the meta device,
        # so they must be (re)computed here or they hold garbage after `from_pretrained`.
        if hasattr(module, "text_hash_powers"):
            init.copy_(module.text_hash_powers, hash_powers(module.text_hash_powers.shape[-1]))
        if hasattr(module, "position_ids"):
            init.copy_(module.position_ids, torch.arange(module.position_ids.shape[-1]).expand((1, -1)))
        if hasattr(module, "logit_scale"):
            init.constant_(module.logit_scale, self.config.logit_scale_init_value)
        if getattr(module, "logit_bias", None) is not None:
            init.constant_(module.logit_bias, self.config.logit_bias_init_value)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained` (safetensors weights + config) plus the remote-code files, so the
        folder loads with `AutoModel.from_pretrained(folder, trust_remote_code=True)` where mm is not installed."""
        result = super().save_pretrained(save_directory, *args, **kwargs)
        save_remote_code(save_directory)
        return result
