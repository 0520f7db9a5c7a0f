"""The base class of every mm model, and the saving of the Hub remote code that travels with its weights."""

import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import CausalLMOutputWithPast

from .modeling_mm_losses import hash_powers

try:  # flat Hub folder (remote code): the config file sits next to this one
    from .configuration_mm import (
        MODALITIES,
        MMAudioConfig,
        MMConfig,
        MMFusionConfig,
        MMSpeechConfig,
        MMTextConfig,
        MMVisionConfig,
    )
except ImportError:  # installed package: the config lives in the sibling package `configuration_mm`
    from configuration_mm.configuration_mm import (
        MODALITIES,
        MMAudioConfig,
        MMConfig,
        MMFusionConfig,
        MMSpeechConfig,
        MMTextConfig,
        MMVisionConfig,
    )

__all__ = [
    "CACHE_NAME", "MODALITIES", "MMPreTrainedModel", "MMConfig", "MMTextConfig", "MMVisionConfig", "MMAudioConfig", "MMFusionConfig", "MMSpeechConfig",
    "save_remote_code",
]  # fmt: skip

# What the running transformers calls the decoding cache in model outputs, in `generate`'s model kwargs and in the
# `forward` keyword it passes: `past_key_values` up to 5.23, `cache` from 5.24 (which still accepts the old name, with a
# deprecation warning). Saved remote code runs on whatever 5.x the consumer has, so mm follows the running version.
CACHE_NAME = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"

# The files a consumer needs to load a saved model with `trust_remote_code=True`, by the package that holds them
# in this repository. They are copied flat into the saved folder (see ../shared/design.md: remote code is flat).
REMOTE_CODE_FILES = {
    "configuration_mm": ("configuration_mm.py",),
    "modeling_mm": (
        "modeling_mm_utils.py",
        "modeling_mm_layers.py",
        "modeling_mm_long_attention.py",
        "modeling_mm_text.py",
        "modeling_mm_vision.py",
        "modeling_mm_audio.py",
        "modeling_mm_audio_adapter.py",
        "modeling_mm_losses.py",
        "modeling_mm.py",
        "modeling_mm_decoder.py",
        "modeling_mm_generation.py",
        "modeling_mm_griffin_lim.py",
        "modeling_mm_speech.py",
        "modeling_mm_fusion.py",
    ),
    # pipeline_mm reads audio files with feature_extraction_mm
    "processing_mm": ("pipeline_mm.py", "feature_extraction_mm.py", "pipeline_mm_text_to_speech.py", "pipeline_mm_classification.py"),
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
    # The Hub task of a checkpoint of this class: the `pipeline_tag` of the card `push_to_hub` writes.
    default_pipeline_tag = "feature-extraction"

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
        if getattr(module, "global_tokens", None) is not None:
            init.normal_(module.global_tokens, mean=0.0, std=std)
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

    def push_to_hub(
        self,
        repo_id,
        *,
        pipeline_tag=None,
        commit_message=None,
        commit_description=None,
        private=None,
        token=None,
        revision=None,
        create_pr=False,
        max_shard_size="50GB",
        tags=None,
    ):
        """`PushToHubMixin.push_to_hub` (same arguments), uploading mm's own model card (the repository's
        `model_card.md`) where transformers would write its empty template. `pipeline_tag` is the checkpoint's Hub
        task (default: the class's `default_pipeline_tag`; pass "automatic-speech-recognition" for a captioner that
        transcribes audio); the card's usage code follows it. A repo that already has a README keeps it, as with
        transformers. Where mm is not installed (a model loaded as remote code), transformers' own card is written.

        Example:
        ```python
        >>> model.push_to_hub("my-org/mm-asr", pipeline_tag="automatic-speech-recognition")  # doctest: +SKIP
        ```
        """
        hub_kwargs = dict(
            commit_message=commit_message,
            commit_description=commit_description,
            private=private,
            token=token,
            revision=revision,
            create_pr=create_pr,
            max_shard_size=max_shard_size,
            tags=tags,
        )
        try:  # the card template and its writer belong to the installed package, not to the checkpoint's code
            from training_mm.hub import write_pushed_model_card
        except ImportError:
            return super().push_to_hub(repo_id, **hub_kwargs)
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        if api.file_exists(repo_id, "README.md", revision=revision):
            return super().push_to_hub(repo_id, **hub_kwargs)
        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(folder, max_shard_size=max_shard_size)
            card = write_pushed_model_card(folder, self, repo_id, pipeline_tag or self.default_pipeline_tag)
            card.data.tags = list(dict.fromkeys([*(card.data.tags or []), *(tags or []), *(self.model_tags or [])]))
            card.save(Path(folder) / "README.md")
            return self._upload_modified_files(
                folder,
                repo_id,
                files_timestamps={},
                commit_message=commit_message,
                token=token,
                create_pr=create_pr,
                revision=revision,
                commit_description=commit_description,
            )
