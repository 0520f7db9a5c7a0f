"""MMModel: text, image and audio in one embedding space (CLIP / ImageBind style) with a contrastive loss."""

from dataclasses import dataclass

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput, can_return_tuple

from .modeling_mm_audio import MMAudioModel
from .modeling_mm_audio_adapter import (
    accepts_frame_mask,
    check_audio_encoder,
    encode_audio,
    pooled_output,
    positions_mask,
    tower_frame_mask,
)
from .modeling_mm_losses import CONTRASTIVE_LOSSES, gather_no_grad, gather_with_grad, hash_powers, text_group_ids
from .modeling_mm_text import MMTextModel
from .modeling_mm_utils import MMConfig, MMPreTrainedModel
from .modeling_mm_vision import MMVisionModel


@dataclass
class MMOutput(ModelOutput):
    """Output of `MMModel.forward`. Embeddings are L2-normalised; logits are scaled cosine similarities.

    Attributes:
        loss: contrastive loss averaged over every present modality pair (with `return_loss=True`), weighted by
            `config.contrastive_pair_weights` when set.
        logits_per_image: (n_images, n_texts). logits_per_text: its transpose (CLIP's naming).
        logits_per_audio: (n_audios, n_texts). logits_per_audio_image: (n_audios, n_images).
        text_embeds, image_embeds, audio_embeds: (n, projection_dim).
        text_model_output, vision_model_output, audio_model_output: the towers' `BaseModelOutputWithPooling`.
    """

    loss: torch.FloatTensor | None = None
    logits_per_image: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    logits_per_audio: torch.FloatTensor | None = None
    logits_per_audio_image: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    audio_embeds: torch.FloatTensor | None = None
    text_model_output: BaseModelOutputWithPooling | None = None
    vision_model_output: BaseModelOutputWithPooling | None = None
    audio_model_output: BaseModelOutputWithPooling | None = None

    def to_tuple(self):
        return tuple(v.to_tuple() if isinstance(v, ModelOutput) else v for v in self.values())


@dataclass
class MMTokenStates(ModelOutput):
    """One modality's output of `MMModel.get_token_states`.

    Attributes:
        hidden_states: (B, N, tower width), the tower's last hidden states.
        mask: (B, N), 1 at real positions and 0 at padding.
        embeds: (B, projection_dim), the L2-normalised embedding of the item.
    """

    hidden_states: torch.FloatTensor | None = None
    mask: torch.LongTensor | None = None
    embeds: torch.FloatTensor | None = None


class MMModel(MMPreTrainedModel):
    """Three towers, each followed by a linear projection into a shared `projection_dim` space.

    `forward` takes any two or three modalities and returns the similarity logits of every present pair; with
    `return_loss=True` it adds the contrastive loss chosen by `config.loss_type` ("clip" or "siglip"), in which
    items with the same `group_ids` (or, without them, identical texts) are positives of each other.

    Example:
    ```python
    >>> import torch
    >>> from configuration_mm import MMConfig
    >>> from modeling_mm import MMModel
    >>> model = MMModel(MMConfig.from_preset("tiny"))
    >>> out = model(
    ...     input_ids=torch.randint(3, 512, (4, 8)),
    ...     pixel_values=torch.randn(4, 3, 32, 32),
    ...     input_features=torch.randn(4, 32, 50),
    ...     return_loss=True,
    ... )
    >>> out.logits_per_image.shape, out.logits_per_audio.shape, out.loss.ndim
    (torch.Size([4, 4]), torch.Size([4, 4]), 0)
    ```
    """

    config_class = MMConfig
    main_input_name = "input_ids"
    default_pipeline_tag = "zero-shot-image-classification"

    def __init__(self, config):
        super().__init__(config)
        self.text_model = _build_tower(MMTextModel, config.text_config)
        self.vision_model = _build_tower(MMVisionModel, config.vision_config)
        self.audio_model = _build_tower(MMAudioModel, config.audio_config)
        # Looked up once: from_encoders swaps in a pretrained tower of the same class.
        self._audio_takes_frame_mask = accepts_frame_mask(self.audio_model)
        self.text_projection = nn.Linear(_width(config.text_config), config.projection_dim, bias=False)
        self.visual_projection = nn.Linear(_width(config.vision_config), config.projection_dim, bias=False)
        self.audio_projection = nn.Linear(_width(config.audio_config), config.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init_value))
        # Only SigLIP's loss has a bias; a parameter the loss never touches would get no gradient.
        self.logit_bias = nn.Parameter(torch.tensor(config.logit_bias_init_value)) if config.loss_type == "siglip" else None
        self.register_buffer(
            "text_hash_powers",
            hash_powers(getattr(config.text_config, "max_position_embeddings", 512)),
            persistent=False,
        )
        self.post_init()

    @classmethod
    def from_encoders(cls, text_encoder=None, vision_encoder=None, audio_encoder=None, config=None, **config_kwargs):
        """Composes towers from existing checkpoints (any AutoModel checkpoint or folder, e.g. a BERT for text and
        a ViT for images), the way `VisionTextDualEncoderModel.from_vision_text_pretrained` does; the towers not
        named come from `config` (default: the "small" preset) and start untrained, as do the projections.

        The audio encoder must take log-mel `input_features` (batch, num_mel_bins, frames), as `MMFeatureExtractor`
        makes them: Whisper-style encoders (`modeling_mm_audio_adapter.WHISPER_STYLE_AUDIO_ENCODERS`) do. Of an
        encoder-decoder checkpoint (Whisper) only the encoder is used.

        Example:
        ```python
        >>> model = MMModel.from_encoders(text_encoder="path/to/bert", vision_encoder="path/to/vit")  # doctest: +SKIP
        ```
        """
        from transformers import AutoConfig, AutoModel

        config = config if config is not None else MMConfig.from_preset("small", **config_kwargs)
        encoders = {"text": text_encoder, "vision": vision_encoder, "audio": audio_encoder}
        sub_configs = {
            f"{name}_config": AutoConfig.from_pretrained(path) for name, path in encoders.items() if path is not None
        }
        if audio_encoder is not None:
            check_audio_encoder(sub_configs["audio_config"], audio_encoder)
        config = MMConfig(**{**config.to_dict(), **sub_configs})
        model = cls(config)
        for name, path in encoders.items():
            if path is not None:
                # Weights from safetensors only: a pytorch_model.bin is a pickle.
                setattr(model, f"{name}_model", _encoder_of(AutoModel.from_pretrained(path, use_safetensors=True)))
        return model

    def get_input_embeddings(self):
        """The text tower's token embeddings (what PEFT and `resize_token_embeddings` look for)."""
        return self.text_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.text_model.set_input_embeddings(value)

    def resize_token_embeddings(self, new_num_tokens=None, pad_to_multiple_of=None, mean_resizing=True):
        """Resizes the text tower's token embeddings and records the new size as the text tower's (and the caption
        decoder's: one tokenizer serves both) `vocab_size`, so the saved checkpoint reloads."""
        embeddings = super().resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
        _set_vocab_size(self.config, embeddings.num_embeddings)
        return embeddings

    @can_return_tuple
    def get_text_features(self, input_ids, attention_mask=None, **kwargs):
        """The text tower's `BaseModelOutputWithPooling` with `pooler_output` = the projected text embeddings
        (B, projection_dim), not normalised: what `CLIPModel.get_text_features` returns in transformers 5.
        `forward`'s `text_embeds` are these, L2-normalised."""
        outputs = self.text_model(input_ids=input_ids, attention_mask=attention_mask, return_dict=True, **kwargs)
        return _projected(outputs, self.text_projection(pooled_output(outputs, attention_mask)))

    @can_return_tuple
    def get_image_features(self, pixel_values, **kwargs):
        """The vision tower's `BaseModelOutputWithPooling` with `pooler_output` = the projected image embeddings
        (B, projection_dim), not normalised (as `CLIPModel.get_image_features`)."""
        outputs = self.vision_model(pixel_values=pixel_values, return_dict=True, **kwargs)
        return _projected(outputs, self.visual_projection(pooled_output(outputs)))

    @can_return_tuple
    def get_audio_features(self, input_features, audio_attention_mask=None, **kwargs):
        """The audio tower's `BaseModelOutputWithPooling` with `pooler_output` = the projected audio embeddings
        (B, projection_dim), not normalised."""
        outputs = self.encode_audio(input_features, audio_attention_mask, return_dict=True, **kwargs)
        return _projected(outputs, self.audio_projection(pooled_output(outputs)))

    def get_token_states(
        self, input_ids=None, attention_mask=None, pixel_values=None, input_features=None, audio_attention_mask=None
    ):
        """Each given modality's token sequence and embedding from one pass of its tower, for heads that fuse them.

        Returns `{"text" | "image" | "audio": MMTokenStates}` with `hidden_states` (B, N, tower width), `mask` (B, N)
        (1 at real positions: text tokens, every patch, audio positions of real frames) and `embeds`
        (B, projection_dim), the L2-normalised embedding that `forward` compares.
        """
        states = {}
        if input_ids is not None:
            outputs = self.text_model(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)
            mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
            embeds = self.text_projection(pooled_output(outputs, attention_mask))
            states["text"] = MMTokenStates(outputs.last_hidden_state, mask.long(), embeds)
        if pixel_values is not None:
            outputs = self.vision_model(pixel_values=pixel_values, return_dict=True)
            hidden = outputs.last_hidden_state
            mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
            states["image"] = MMTokenStates(hidden, mask, self.visual_projection(pooled_output(outputs)))
        if input_features is not None:
            outputs = self.encode_audio(input_features, audio_attention_mask, return_dict=True)
            hidden = outputs.last_hidden_state
            frame_mask = tower_frame_mask(self.config.audio_config, input_features, audio_attention_mask)
            mask = positions_mask(frame_mask, hidden)
            states["audio"] = MMTokenStates(hidden, mask, self.audio_projection(pooled_output(outputs)))
        for item in states.values():
            item.embeds = nn.functional.normalize(item.embeds, dim=-1)
        return states

    @can_return_tuple
    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        pixel_values=None,
        input_features=None,
        audio_attention_mask=None,
        group_ids=None,
        return_loss=None,
        output_attentions=None,
        output_hidden_states=None,
        **kwargs,
    ):
        """Embeds every modality given, scores every present pair, and (with `return_loss=True`) adds the loss.

        Args:
            input_ids, attention_mask: tokenized text (B, L).
            pixel_values: images (B, 3, H, W) from `MMImageProcessor`.
            input_features, audio_attention_mask: log-mel audio (B, n_mels, T) and its frame mask (B, T).
            group_ids: optional (B,) ids; items with equal ids are positives. Without them, identical texts are.
                (Not called `labels`: `Trainer` takes an argument of that name for targets and then computes no
                evaluation loss for batches without it; the contrastive loss has no targets.)
            return_loss: compute the contrastive loss over all present pairs (all modalities must share B).
            return_dict: `False` (or `config.return_dict = False`) returns a tuple of the non-None fields.
        """
        if "labels" in kwargs:
            raise TypeError(
                "MMModel.forward takes the contrastive group ids as `group_ids=`, not `labels=` (renamed so that "
                "Trainer computes the evaluation loss without `label_names=[]`); pass group_ids=..."
            )
        tower_kwargs = dict(
            output_attentions=output_attentions, output_hidden_states=output_hidden_states, return_dict=True
        )
        text_out = vision_out = audio_out = None
        embeds = {}
        if input_ids is not None:
            text_out = self.text_model(input_ids=input_ids, attention_mask=attention_mask, **tower_kwargs)
            embeds["text"] = self.text_projection(pooled_output(text_out, attention_mask))
        if pixel_values is not None:
            vision_out = self.vision_model(pixel_values=pixel_values, **tower_kwargs)
            embeds["image"] = self.visual_projection(pooled_output(vision_out))
        if input_features is not None:
            audio_out = self.encode_audio(input_features, audio_attention_mask, **tower_kwargs)
            embeds["audio"] = self.audio_projection(pooled_output(audio_out))
        if len(embeds) < 2 and (return_loss or len(embeds) == 0):
            raise ValueError(
                f"MMModel.forward needs at least two of text (input_ids), image (pixel_values) and audio "
                f"(input_features) to compare; got {sorted(embeds) or 'none'}. For one modality use "
                f"get_text_features / get_image_features / get_audio_features."
            )
        embeds = {name: nn.functional.normalize(e, dim=-1) for name, e in embeds.items()}

        scale = self.logit_scale.exp().clamp(max=100.0)  # CLIP's clamp keeps the temperature >= 0.01
        bias = self.logit_bias if self.logit_bias is not None else 0.0
        pairs = [(a, b) for a, b in (("image", "text"), ("audio", "text"), ("audio", "image")) if a in embeds and b in embeds]
        logits = {pair: embeds[pair[0]] @ embeds[pair[1]].t() * scale + bias for pair in pairs}

        loss = None
        if return_loss:
            loss = self._contrastive_loss(embeds, pairs, scale, bias, group_ids, input_ids, attention_mask)

        image_text = logits.get(("image", "text"))
        return MMOutput(
            loss=loss,
            logits_per_image=image_text,
            logits_per_text=None if image_text is None else image_text.t(),
            logits_per_audio=logits.get(("audio", "text")),
            logits_per_audio_image=logits.get(("audio", "image")),
            text_embeds=embeds.get("text"),
            image_embeds=embeds.get("image"),
            audio_embeds=embeds.get("audio"),
            text_model_output=text_out,
            vision_model_output=vision_out,
            audio_model_output=audio_out,
        )

    def encode_audio(self, input_features, audio_attention_mask=None, **kwargs):
        """The audio tower's `BaseModelOutputWithPooling` (pooled over the positions of real frames), for mm's own
        tower or a Whisper-style one (see `modeling_mm_audio_adapter`); what both heads run audio through."""
        return encode_audio(
            self.audio_model,
            self.config.audio_config,
            input_features,
            audio_attention_mask,
            takes_frame_mask=self._audio_takes_frame_mask,
            **kwargs,
        )

    def _contrastive_loss(self, embeds, pairs, scale, bias, group_ids, input_ids, attention_mask):
        sizes = {name: e.shape[0] for name, e in embeds.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"return_loss needs aligned items (one per modality each); got batch sizes {sizes}.")
        if group_ids is None and input_ids is not None:
            group_ids = text_group_ids(input_ids, attention_mask, self.text_hash_powers)
        if group_ids is None:  # image + audio only: each item is its own class
            group_ids = torch.arange(next(iter(sizes.values())), device=self.logit_scale.device)
        # Under torch.distributed, negatives come from the global batch; the gather keeps the gradients.
        global_embeds = {name: gather_with_grad(e) for name, e in embeds.items()}
        global_ids = gather_no_grad(group_ids)
        positives = global_ids[:, None] == global_ids[None, :]
        loss_fn = CONTRASTIVE_LOSSES[self.config.loss_type]
        beta = getattr(self.config, "hard_negative_beta", 0.0)  # absent from configs saved before the option
        losses = [
            loss_fn(global_embeds[a] @ global_embeds[b].t() * scale + bias, positives, hard_negative_beta=beta)
            for a, b in pairs
        ]
        losses = torch.stack(losses)
        pair_weights = getattr(self.config, "contrastive_pair_weights", None)  # e.g. set by the meta-controller
        if not pair_weights:
            return losses.mean()
        weights = losses.new_tensor([pair_weights.get(f"{a}_{b}", 1.0) for a, b in pairs])
        return (losses * weights).sum() / weights.sum()


def _build_tower(mm_class, config):
    """Our own tower for our config; any transformers architecture otherwise (a pretrained BERT, ViT, ...),
    composed the way `VisionTextDualEncoderModel` does."""
    # Compared by model_type, not isinstance: as remote code, transformers may import configuration_mm.py twice
    # (once for AutoConfig, once next to the modeling files), giving two distinct MMTextConfig classes.
    if config.model_type == mm_class.config_class.model_type:
        return mm_class._from_config(config)
    from transformers import AutoModel

    return _encoder_of(AutoModel.from_config(config))


def _encoder_of(model):
    # Of an encoder-decoder (e.g. Whisper), the tower is the encoder.
    return model.get_encoder() if model.config.is_encoder_decoder else model


def _projected(outputs, embeds):
    """A tower's output with its pooled output replaced by the projected embeddings (CLIP's get_*_features)."""
    return BaseModelOutputWithPooling(
        last_hidden_state=outputs.last_hidden_state,
        pooler_output=embeds,
        hidden_states=outputs.hidden_states,
        attentions=outputs.attentions,
    )


def _set_vocab_size(config, vocab_size):
    """One tokenizer serves the text tower and the caption decoder: both configs hold its size."""
    config.text_config.vocab_size = vocab_size
    config.decoder_config.vocab_size = vocab_size


def _width(config):
    # Most architectures call it hidden_size; a few (e.g. Swin, ConvNeXt) expose the last stage's width.
    return getattr(config, "hidden_size", None) or config.hidden_sizes[-1]
