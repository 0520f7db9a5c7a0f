"""MMForClassification: decisions (classes, tags, scores) from any mix of text, image and audio, on `MMModel`'s towers.

The towers (under `self.mm`) encode each given modality; a fusion module (`config.fusion_encoder_config.fusion_type`: late,
gated, concat or cross; see docs/design.md, "Fusion") combines what each item has, and one linear head per task reads
the fused vector. An item's absent modalities are masked out of the fusion, never filled with zeros, so an item's
logits are the same alone or in a batch whose items carry other subsets.
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import initialization as init
from transformers.masking_utils import create_bidirectional_mask
from transformers.utils import ModelOutput, logging

from .modeling_mm import MMModel, _width
from .modeling_mm_layers import MMAttention, MMEncoderLayer, MMMLP, masked_mean
from .modeling_mm_utils import MODALITIES, MMConfig, MMFusionConfig, MMPreTrainedModel

logger = logging.get_logger(__name__)


@dataclass
class MMClassifierOutput(ModelOutput):
    """Output of `MMForClassification.forward`.

    Attributes:
        loss: with `labels`: the task's loss; with several tasks, their uncertainty-weighted (or plain) sum.
        logits: (B, num_labels) of the default task (`config.default_task`); raw scores, before softmax/sigmoid.
        task_logits: with several tasks, `{task: (B, num_labels)}`.
        task_losses: with several tasks and `labels`, `{task: loss}` before weighting.
        fused_embeds: (B, fusion hidden size), what the heads read.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    task_logits: dict | None = None
    task_losses: dict | None = None
    fused_embeds: torch.FloatTensor | None = None


class MMForClassification(MMPreTrainedModel):
    """Classification, multi-label tagging and regression (one or several tasks) from text, images and/or audio.

    Starts from scratch (`MMForClassification(config)`), from an `MMModel` checkpoint (`from_pretrained(folder)`:
    its towers are reused, the fusion layers and heads are new) or from existing encoders (`from_encoders`).

    Each modality may be absent for some items: pass `has_text`/`has_image`/`has_audio` (B,) booleans (the tensors
    of absent items are ignored); a modality without a tensor is absent for all. `labels` follow transformers'
    `problem_type`: class ids (B,), multi-hot (B, num_labels) floats, or values (B,) / (B, num_labels); with several
    tasks, a dict `{task: labels}` (tasks left out get no loss).

    Example:
    ```python
    >>> import torch
    >>> from configuration_mm import MMConfig
    >>> from modeling_mm import MMForClassification
    >>> config = MMConfig.from_preset("tiny", num_labels=3, fusion_encoder_config={"fusion_type": "concat"})
    >>> model = MMForClassification(config)
    >>> out = model(
    ...     input_ids=torch.randint(3, 512, (2, 8)),
    ...     pixel_values=torch.randn(2, 3, 32, 32),
    ...     has_image=torch.tensor([True, False]),  # the second item is text only
    ...     labels=torch.tensor([0, 2]),
    ... )
    >>> out.logits.shape, out.loss.ndim
    (torch.Size([2, 3]), 0)
    ```
    """

    config_class = MMConfig
    main_input_name = "input_ids"
    _no_split_modules = MMPreTrainedModel._no_split_modules + ["MMCrossFusionLayer"]
    # The loss is a per-batch mean: let `Trainer` scale it for gradient accumulation.
    accepts_loss_kwargs = False

    def __init__(self, config):
        super().__init__(config)
        self.mm = MMModel._from_config(config)
        towers = {"text": config.text_config, "image": config.vision_config, "audio": config.audio_config}
        self.fusion = MMFusionModel._from_config(
            config.fusion_encoder_config,
            tower_widths={name: _width(tower) for name, tower in towers.items()},
            projection_dim=config.projection_dim,
        )
        fusion_encoder_config = config.fusion_encoder_config
        self.dropout = nn.Dropout(fusion_encoder_config.classifier_dropout)
        self.tasks = config.task_specs()
        self.classifier = nn.ModuleDict(
            {name: nn.Linear(fusion_encoder_config.hidden_size, spec["num_labels"]) for name, spec in self.tasks.items()}
        )
        # log(sigma^2) per task (Kendall et al. 2018), learned with the model; unused with one task.
        if len(self.tasks) > 1 and config.task_loss_weighting == "uncertainty":
            self.task_log_variance = nn.Parameter(torch.zeros(len(self.tasks)))
        else:
            self.task_log_variance = None
        self.post_init()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`; from an `MMModel` checkpoint the towers load and the fusion layers
        and task heads start untrained, which is logged."""
        wants_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs)
        parts = {"fusion": "fusion layers", "classifier": "task heads", "task_log_variance": "task loss weights"}
        new = [name for prefix, name in parts.items() if any(key.split(".")[0] == prefix for key in info["missing_keys"])]
        if new:
            logger.warning(
                "Loaded the towers of %s; the %s are new (untrained): train them, e.g. with "
                "examples/run_classification.py --model_name_or_path %s.",
                pretrained_model_name_or_path,
                ", ".join(new),
                pretrained_model_name_or_path,
            )
        return (model, info) if wants_info else model

    @classmethod
    def from_encoders(cls, text_encoder=None, vision_encoder=None, audio_encoder=None, config=None, **config_kwargs):
        """Towers from existing checkpoints, as `MMModel.from_encoders`; the fusion layers and heads are new.

        Example:
        ```python
        >>> model = MMForClassification.from_encoders(text_encoder="path/to/bert", num_labels=3)  # doctest: +SKIP
        ```
        """
        mm = MMModel.from_encoders(text_encoder, vision_encoder, audio_encoder, config=config, **config_kwargs)
        model = cls(mm.config)
        model.mm = mm
        return model

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if module is self and self.task_log_variance is not None:
            init.zeros_(self.task_log_variance)  # unit task variances

    def get_input_embeddings(self):
        return self.mm.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.mm.set_input_embeddings(value)

    def freeze_towers(self, frozen=True):
        """Stops (or restarts) training the towers, e.g. while the new fusion layers and heads warm up
        (`training_mm.classification.FreezeTowersCallback`)."""
        for parameter in self.mm.parameters():
            parameter.requires_grad_(not frozen)

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        pixel_values=None,
        input_features=None,
        audio_attention_mask=None,
        has_text=None,
        has_image=None,
        has_audio=None,
        labels=None,
        return_dict=None,
        **kwargs,
    ):
        """Logits of every task (and with `labels` the loss) from whichever modalities each item has.

        Args:
            input_ids, attention_mask: tokenized text (B, L).
            pixel_values: images (B, 3, H, W).
            input_features, audio_attention_mask: log-mel audio (B, n_mels, T) and its frame mask (B, T).
            has_text, has_image, has_audio: (B,) booleans, which items have that modality (default: all items,
                when its tensor is given). Every item needs at least one.
            labels: see the class docstring.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        tensors = {"text": input_ids, "image": pixel_values, "audio": input_features}
        present = self._presence(tensors, {"text": has_text, "image": has_image, "audio": has_audio})
        if self.training and self.config.fusion_encoder_config.modality_dropout > 0:
            present = _drop_modalities(present, self.config.fusion_encoder_config.modality_dropout)

        states = self._token_states(tensors, present, attention_mask, audio_attention_mask)
        fused = self.fusion(states, present)  # (B, hidden)
        fused_for_heads = self.dropout(fused)
        task_logits = {name: head(fused_for_heads) for name, head in self.classifier.items()}

        loss = task_losses = None
        if labels is not None:
            loss, task_losses = self._loss(task_logits, labels)
        default = self.config.default_task if len(self.tasks) > 1 else next(iter(self.tasks))
        output = MMClassifierOutput(
            loss=loss,
            logits=task_logits[default],
            task_logits=task_logits if len(self.tasks) > 1 else None,
            task_losses=task_losses if len(self.tasks) > 1 else None,
            fused_embeds=fused,
        )
        return output if return_dict else output.to_tuple()

    def _presence(self, tensors, flags):
        """{modality: (B,) bool} for every modality with a tensor; fails on an item with none."""
        given = {name: tensor for name, tensor in tensors.items() if tensor is not None}
        if not given:
            raise ValueError(
                "MMForClassification needs at least one of text (input_ids), image (pixel_values) and audio "
                "(input_features)."
            )
        sizes = {name: tensor.shape[0] for name, tensor in given.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(
                f"Every modality needs one row per item (use has_text/has_image/has_audio for absent ones); got batch "
                f"sizes {sizes}."
            )
        batch = next(iter(sizes.values()))
        present = {}
        for name, tensor in given.items():
            flag = flags[name]
            present[name] = (
                torch.ones(batch, dtype=torch.bool, device=tensor.device) if flag is None else flag.to(tensor.device).bool()
            )
        for name, flag in flags.items():
            if flag is not None and name not in given and bool(flag.any()):
                raise ValueError(f"has_{name} marks items with {name}, but no {name} tensor was given.")
        nothing = ~torch.stack(list(present.values())).any(dim=0)
        if bool(nothing.any()):
            raise ValueError(
                f"Items {nothing.nonzero().flatten().tolist()} have no modality (all of has_text/has_image/has_audio "
                "are False): each item needs text, an image or audio."
            )
        return present

    def _token_states(self, tensors, present, attention_mask, audio_attention_mask):
        """Runs each tower on the items that have its modality only, and scatters the results back to the batch:
        {modality: MMTokenStates over B rows}, where rows of absent items are all masked."""
        states = {}
        for name, rows in present.items():
            index = rows.nonzero().flatten()
            if index.numel() == 0:
                continue
            if name == "text":  # each tower sees only the rows that have its modality
                mask = None if attention_mask is None else attention_mask[index]
                item = self.mm.get_token_states(input_ids=tensors["text"][index], attention_mask=mask)["text"]
            elif name == "image":
                item = self.mm.get_token_states(pixel_values=tensors["image"][index])["image"]
            else:
                mask = None if audio_attention_mask is None else audio_attention_mask[index]
                item = self.mm.get_token_states(input_features=tensors["audio"][index], audio_attention_mask=mask)["audio"]
            if index.numel() < rows.numel():
                item = _scatter_rows(item, index, rows.numel())
            states[name] = item
        return states

    def _loss(self, task_logits, labels):
        if len(self.tasks) == 1 and not isinstance(labels, dict):
            labels = {next(iter(self.tasks)): labels}
        if not isinstance(labels, dict):
            raise ValueError(
                f"This model has several tasks {list(self.tasks)}: pass labels as a dict {{task: labels}}."
            )
        unknown = set(labels) - set(self.tasks)
        if unknown:
            raise ValueError(f"labels for unknown task(s) {sorted(unknown)}; the model's tasks are {list(self.tasks)}.")
        losses = {}
        for name, value in labels.items():
            spec = self.tasks[name]
            losses[name] = task_loss(
                task_logits[name], value.to(task_logits[name].device), spec["problem_type"], self.config.focal_loss_gamma
            )
        if len(losses) == 1 and len(self.tasks) == 1:
            return next(iter(losses.values())), losses
        total = 0.0
        weights = getattr(self.config, "task_loss_weights", None) or {}  # e.g. set by the meta-controller
        for position, (name, spec) in enumerate(self.tasks.items()):
            if name not in losses:
                continue
            weighted = weights.get(name, 1.0) * losses[name]
            if self.task_log_variance is None:
                total = total + weighted
                continue
            # Kendall et al. 2018, eq. 10 with s = log sigma^2: regression 1/(2 sigma^2) L + log sigma,
            # classification 1/sigma^2 L + log sigma.
            log_variance = self.task_log_variance[position]
            scale = 0.5 if spec["problem_type"] == "regression" else 1.0
            total = total + scale * torch.exp(-log_variance) * weighted + 0.5 * log_variance
        return total, losses


def task_loss(logits, labels, problem_type, focal_gamma=0.0):
    """One task's loss by transformers' `problem_type` (None: inferred from the labels, as transformers' heads do);
    `focal_gamma > 0` turns classification losses into the focal loss (Lin et al. 2017). Class id -100 is ignored."""
    num_labels = logits.shape[-1]
    if problem_type is None:
        if num_labels == 1:
            problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int):
            problem_type = "single_label_classification"
        else:
            problem_type = "multi_label_classification"
    if problem_type == "regression":
        if not labels.is_floating_point():
            labels = labels.float()
        return nn.functional.mse_loss(logits.squeeze(-1) if num_labels == 1 else logits, labels.view(-1) if num_labels == 1 else labels)
    if problem_type == "single_label_classification":
        labels = labels.view(-1).long()
        log_probs = nn.functional.log_softmax(logits.float(), dim=-1)
        keep = labels != -100
        if not bool(keep.any()):
            return logits.sum() * 0.0
        log_p = log_probs[keep].gather(1, labels[keep, None]).squeeze(1)
        weight = (1 - log_p.exp()) ** focal_gamma if focal_gamma > 0 else 1.0
        return -(weight * log_p).mean()
    labels = labels.to(logits.dtype)
    bce = nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    if focal_gamma > 0:
        p = torch.sigmoid(logits)
        p_t = p * labels + (1 - p) * (1 - labels)
        bce = bce * (1 - p_t) ** focal_gamma
    return bce.mean()


def _drop_modalities(present, probability):
    """Hides each present modality of each item with `probability`, keeping at least one per item (a random one of
    those it had)."""
    names = list(present)
    stacked = torch.stack([present[name] for name in names])  # (M, B)
    kept = stacked & (torch.rand(stacked.shape, device=stacked.device) >= probability)
    empty = ~kept.any(dim=0)
    if bool(empty.any()):
        # One of the item's own modalities at random: the largest random score among them.
        scores = torch.rand(stacked.shape, device=stacked.device).masked_fill(~stacked, -1.0)
        chosen = nn.functional.one_hot(scores.argmax(dim=0), len(names)).t().bool()
        kept = kept | (chosen & empty)
    return {name: kept[i] for i, name in enumerate(names)}


def _scatter_rows(item, index, batch):
    """Token states of some rows placed into a batch of `batch` rows; the other rows are masked out entirely (their
    zeros are never attended to nor pooled)."""
    hidden = item.hidden_states.new_zeros((batch, *item.hidden_states.shape[1:])).index_copy(0, index, item.hidden_states)
    mask = item.mask.new_zeros((batch, item.mask.shape[1])).index_copy(0, index, item.mask)
    embeds = item.embeds.new_zeros((batch, item.embeds.shape[1])).index_copy(0, index, item.embeds)
    return type(item)(hidden_states=hidden, mask=mask, embeds=embeds)


class MMFusionModel(MMPreTrainedModel):
    """Combines each item's modalities into one vector (B, hidden), by `config.fusion_type` (an `MMFusionConfig`).

    A model of its own (like each tower), so `attn_implementation` reaches its attention layers.
    `tower_widths` ({modality: width}) are the widths of the token states it fuses ("concat", "cross");
    `projection_dim` that of the joint embeddings it fuses ("late", "gated").
    """

    config_class = MMFusionConfig

    def __init__(self, config, tower_widths, projection_dim):
        super().__init__(config)
        self.fusion_type = config.fusion_type
        hidden = config.hidden_size
        if self.fusion_type in ("late", "gated"):
            # From the joint embeddings, which an MMModel checkpoint has already aligned across modalities.
            self.embed_projections = nn.ModuleDict({name: nn.Linear(projection_dim, hidden) for name in MODALITIES})
            if self.fusion_type == "late":
                self.modality_weights = nn.Parameter(torch.zeros(len(MODALITIES)))
            else:
                self.gates = nn.ModuleDict({name: nn.Linear(projection_dim, 1) for name in MODALITIES})
        else:
            self.token_projections = nn.ModuleDict({name: nn.Linear(tower_widths[name], hidden) for name in MODALITIES})
            self.modality_embeddings = nn.Embedding(len(MODALITIES), hidden)
            layer = MMEncoderLayer if self.fusion_type == "concat" else MMCrossFusionLayer
            self.layers = nn.ModuleList([layer(config) for _ in range(config.num_hidden_layers)])
        self.layer_norm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        # Equal modality weights to start with, and an empty null token.
        if module is self and self.fusion_type == "late":
            init.zeros_(self.modality_weights)
        if isinstance(module, MMCrossFusionLayer):
            init.zeros_(module.null_token)

    def forward(self, states, present):
        if self.fusion_type in ("late", "gated"):
            return self.layer_norm(self._pooled_fusion(states, present))
        tokens, masks = {}, {}
        for name, item in states.items():
            kind = self.modality_embeddings.weight[MODALITIES.index(name)]
            tokens[name] = self.token_projections[name](item.hidden_states) + kind  # (B, N_m, hidden)
            masks[name] = item.mask * present[name][:, None].to(item.mask.dtype)  # dropped modalities: all masked
        if self.fusion_type == "concat":
            hidden = torch.cat(list(tokens.values()), dim=1)  # (B, sum N_m, hidden)
            mask = torch.cat(list(masks.values()), dim=1)
            attention_mask = create_bidirectional_mask(config=self.config, inputs_embeds=hidden, attention_mask=mask)
            for layer in self.layers:
                hidden, _ = layer(hidden, attention_mask)
        else:
            for layer in self.layers:
                tokens = layer(tokens, masks)
            hidden, mask = torch.cat(list(tokens.values()), dim=1), torch.cat(list(masks.values()), dim=1)
        return self.layer_norm(masked_mean(hidden, mask))

    def _pooled_fusion(self, states, present):
        names = list(states)
        features = torch.stack([self.embed_projections[name](states[name].embeds) for name in names], dim=1)  # (B, M, hidden)
        if self.fusion_type == "late":
            scores = self.modality_weights[[MODALITIES.index(name) for name in names]].expand(features.shape[0], -1)
        else:
            features = torch.tanh(features)
            scores = torch.cat([self.gates[name](states[name].embeds) for name in names], dim=1)  # (B, M)
        available = torch.stack([present[name] for name in names], dim=1)
        weights = scores.masked_fill(~available, float("-inf")).softmax(dim=1)  # absent modalities weigh 0
        return (weights.unsqueeze(-1) * features).sum(dim=1)


class MMCrossFusionLayer(nn.Module):
    """One layer of "cross" fusion: each modality's tokens attend to the other modalities' tokens, then an MLP
    (pre-norm, residual). A learned null token is always among the keys, so an item with one modality attends to it
    and no attention row is ever fully masked."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.cross_attn = MMAttention(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = MMMLP(config)
        self.null_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, tokens, masks):
        normed = {name: self.layer_norm1(hidden) for name, hidden in tokens.items()}
        updated = {}
        for name, hidden in tokens.items():
            others = [other for other in tokens if other != name]
            batch = hidden.shape[0]
            null = self.null_token.expand(batch, -1, -1)
            keys = torch.cat([null, *(normed[other] for other in others)], dim=1)  # (B, 1 + N_others, hidden)
            key_mask = torch.cat(
                [masks[name].new_ones(batch, 1), *(masks[other] for other in others)], dim=1
            )
            attention_mask = create_bidirectional_mask(
                config=self.config, inputs_embeds=normed[name], attention_mask=key_mask, encoder_hidden_states=keys
            )
            attn_output, _ = self.cross_attn(normed[name], attention_mask, key_value_states=keys)
            hidden = hidden + self.dropout(attn_output)
            updated[name] = hidden + self.dropout(self.mlp(self.layer_norm2(hidden)))
        return updated
