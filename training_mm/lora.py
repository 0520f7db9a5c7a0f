"""LoRA on mm models through PEFT: which layers get adapters, and the `LoraConfig`.

Default targets are every attention projection (`q_proj`, `k_proj`, `v_proj`, `out_proj`) and MLP layer (`fc1`,
`fc2`) of the chosen towers; in `MMForConditionalGeneration` the towers sit under `mm.` and the caption decoder's
self- and cross-attention count as its attention. The towers' output projections (`text_projection`,
`visual_projection`, `audio_projection`), `logit_scale` and the decoder's embeddings stay frozen and stay out of the
adapter: they define the embedding space and the vocabulary the other towers and the base checkpoint share, and a
LoRA update of the last layers already moves what each tower feeds into its projection (as in CLIP-LoRA, Zanella
and Ben Ayed 2024, which adapts the encoders' attention and leaves projections and temperature alone). So the
adapter holds every changed weight: base + adapter reproduces the trained model. A classifier's fusion layers and
task heads are the exception: small and specific to the task, they train in full, as PEFT's `modules_to_save`, and
the adapter stores their trained copies.

Example:
```python
>>> from peft import get_peft_model
>>> from training_mm.lora import build_lora_config
>>> model = get_peft_model(model, build_lora_config(model, towers=("text", "vision"), r=8))  # doctest: +SKIP
>>> trainable, total = model.get_nb_trainable_parameters()  # PEFT's own count  # doctest: +SKIP
```
"""

import re

from peft import LoraConfig
from torch import nn

# Leaf names of the layers LoRA adapts by default: attention projections and the MLP (CLIP/SigLIP names).
ATTENTION_MODULES = ("q_proj", "k_proj", "v_proj", "out_proj")
MLP_MODULES = ("fc1", "fc2")
DEFAULT_MODULES = ATTENTION_MODULES + MLP_MODULES
# Tower name (as on the command line) -> attribute holding it in MMModel; "decoder" exists in the generation model only.
TOWER_ATTRIBUTES = {"text": "text_model", "vision": "vision_model", "audio": "audio_model", "decoder": "decoder"}
# Which tower sees which input modality of a batch.
MODALITY_TOWERS = {"text": "text", "image": "vision", "audio": "audio"}


def tower_paths(model):
    """`{tower: module path}` for the towers `model` has: "text_model" in `MMModel`, "mm.text_model" in
    `MMForConditionalGeneration` (its towers are an `MMModel` under `mm`), "decoder" for its caption decoder."""
    modules = dict(model.named_modules())
    paths = {}
    for tower, attribute in TOWER_ATTRIBUTES.items():
        for path in (attribute, f"mm.{attribute}"):
            if isinstance(modules.get(path), nn.Module):
                paths[tower] = path
                break
    return paths


def default_target_modules(model, towers):
    """A regular expression (PEFT full-matches it against module paths) selecting the attention and MLP linears of
    `towers` in `model`, e.g. `(text_model|vision_model)\\..*\\.(q_proj|k_proj|v_proj|out_proj|fc1|fc2)`.

    Raises `ValueError` for a tower the model lacks, and for a tower with none of those layers (a tower of another
    architecture, e.g. a BERT composed with `MMModel.from_encoders`, names its layers differently).
    """
    available = tower_paths(model)
    missing = [tower for tower in towers if tower not in available]
    if missing or not towers:
        raise ValueError(
            f"Cannot put LoRA on tower(s) {missing or list(towers)}: {type(model).__name__} has the towers "
            f"{sorted(available)}. Choose --towers among them."
        )
    layers = "|".join(DEFAULT_MODULES)
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    for tower in towers:
        if not any(re.fullmatch(f"{re.escape(available[tower])}\\..*\\.({layers})", name) for name in linears):
            tower_class = type(model.get_submodule(available[tower])).__name__
            raise ValueError(
                f"The {tower} tower ({available[tower]}, {tower_class}) has no linear layer named "
                f"{list(DEFAULT_MODULES)}; name its layers with --target_modules (a regular expression over module "
                "paths, e.g. 'text_model\\..*\\.(query|key|value)' for a BERT)."
            )
    return f"({'|'.join(re.escape(available[tower]) for tower in towers)})\\..*\\.({layers})"


def build_lora_config(model, towers, r=8, alpha=16, dropout=0.05, target_modules=None, modules_to_save=None):
    """The `LoraConfig` for `towers` of `model`: default targets (see `default_target_modules`) unless
    `target_modules` (a regular expression over module paths, or a list of module names) says otherwise;
    `modules_to_save` (module names) train in full and are saved whole in the adapter.

    No `task_type`: mm models go through the plain `PeftModel`, whose `forward` and `generate` pass every argument
    (pixel_values, input_features, ...) to the model unchanged.
    """
    if r <= 0 or alpha <= 0 or not 0.0 <= dropout < 1.0:
        raise ValueError(
            f"LoRA needs r > 0, alpha > 0 and dropout in [0, 1); got r={r}, alpha={alpha}, dropout={dropout}."
        )
    targets = target_modules if target_modules else default_target_modules(model, towers)
    return LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none", modules_to_save=modules_to_save
    )
