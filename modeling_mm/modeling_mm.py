"""MMModel: text, image and audio in one embedding space (CLIP / ImageBind style) with a contrastive loss."""

import inspect
from dataclasses import dataclass

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput

from .modeling_mm_audio import MMAudioModel
from .modeling_mm_layers import masked_mean
from .modeling_mm_losses import CONTRASTIVE_LOSSES, gather_no_grad, gather_with_grad, hash_powers, text_group_ids
from .modeling_mm_text import MMTextModel
from .modeling_mm_utils import MMAudioConfig, MMConfig, MMPreTrainedModel
from .modeling_mm_vision import MMVisionModel


@dataclass
class MMOutput(ModelOutput):
    """Output of `MMModel.forward`. Embeddings are L2-normalised; logits are scaled cosine similarities.

    Attributes:
        loss: contrastive loss averaged over every present modality pair (with `return_loss=True`).
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
    items with the same `labels` (or, without labels, identical texts) are positives of each other.

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

    def __init__(self, config):
        super().__init__(config)
        self.text_model = _build_tower(MMTextModel, config.text_config)
        self.vision_model = _build_tower(MMVisionModel, config.vision_config)
        self.audio_model = _build_tower(MMAudioModel, config.audio_config)
        # Of other audio architectures, only this name marks a (batch, frames) mask (audioflamingo3_encoder): the
        # `attention_mask` of Qwen2-Audio's and Voxtral's encoders would be a 4-D attention mask, and both ignore
        # padding by design. Looked up once: from_encoders swaps in a pretrained tower of the same class.
        self._audio_takes_frame_mask = "input_features_mask" in inspect.signature(self.audio_model.forward).parameters
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
        makes them: Whisper-style encoders (`WHISPER_STYLE_AUDIO_ENCODERS`) do. Of an encoder-decoder checkpoint
        (Whisper) only the encoder is used.

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
            _check_audio_encoder(sub_configs["audio_config"], audio_encoder)
        config = MMConfig(**{**config.to_dict(), **sub_configs})
        model = cls(config)
        for name, path in encoders.items():
            if path is not None:
                setattr(model, f"{name}_model", _encoder_of(AutoModel.from_pretrained(path)))
        return model

    def get_input_embeddings(self):
        """The text tower's token embeddings (what PEFT and `resize_token_embeddings` look for)."""
        return self.text_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.text_model.set_input_embeddings(value)

    def get_text_features(self, input_ids, attention_mask=None, **kwargs):
        """L2-normalised text embeddings (B, projection_dim)."""
        outputs = self.text_model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        return nn.functional.normalize(self.text_projection(_pooled(outputs, attention_mask)), dim=-1)

    def get_image_features(self, pixel_values, **kwargs):
        """L2-normalised image embeddings (B, projection_dim)."""
        outputs = self.vision_model(pixel_values=pixel_values, **kwargs)
        return nn.functional.normalize(self.visual_projection(_pooled(outputs)), dim=-1)

    def get_audio_features(self, input_features, audio_attention_mask=None, **kwargs):
        """L2-normalised audio embeddings (B, projection_dim)."""
        outputs = self._audio_tower(input_features, audio_attention_mask, **kwargs)
        return nn.functional.normalize(self.audio_projection(_pooled(outputs)), dim=-1)

    def get_token_states(
        self, input_ids=None, attention_mask=None, pixel_values=None, input_features=None, audio_attention_mask=None
    ):
        """Each given modality's token sequence and embedding from one pass of its tower, for heads that fuse them.

        Returns `{"text" | "image" | "audio": MMTokenStates}` with `hidden_states` (B, N, tower width), `mask` (B, N)
        (1 at real positions: text tokens, every patch, audio positions of real frames) and `embeds`
        (B, projection_dim), the L2-normalised embedding `get_*_features` returns.
        """
        states = {}
        if input_ids is not None:
            outputs = self.text_model(input_ids=input_ids, attention_mask=attention_mask)
            mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
            embeds = self.text_projection(_pooled(outputs, attention_mask))
            states["text"] = MMTokenStates(outputs.last_hidden_state, mask.long(), embeds)
        if pixel_values is not None:
            outputs = self.vision_model(pixel_values=pixel_values)
            hidden = outputs.last_hidden_state
            mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
            states["image"] = MMTokenStates(hidden, mask, self.visual_projection(_pooled(outputs)))
        if input_features is not None:
            outputs = self._audio_tower(input_features, audio_attention_mask)
            hidden = outputs.last_hidden_state
            mask = _positions_mask(self._tower_frame_mask(input_features, audio_attention_mask), hidden)
            states["audio"] = MMTokenStates(hidden, mask, self.audio_projection(_pooled(outputs)))
        for item in states.values():
            item.embeds = nn.functional.normalize(item.embeds, dim=-1)
        return states

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        pixel_values=None,
        input_features=None,
        audio_attention_mask=None,
        labels=None,
        return_loss=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        **kwargs,
    ):
        """Embeds every modality given, scores every present pair, and (with `return_loss=True`) adds the loss.

        Args:
            input_ids, attention_mask: tokenized text (B, L).
            pixel_values: images (B, 3, H, W) from `MMImageProcessor`.
            input_features, audio_attention_mask: log-mel audio (B, n_mels, T) and its frame mask (B, T).
            labels: optional (B,) group ids; equal ids are positives. Without them, identical texts are.
            return_loss: compute the contrastive loss over all present pairs (all modalities must share B).
        """
        tower_kwargs = dict(output_attentions=output_attentions, output_hidden_states=output_hidden_states)
        text_out = vision_out = audio_out = None
        embeds = {}
        if input_ids is not None:
            text_out = self.text_model(input_ids=input_ids, attention_mask=attention_mask, **tower_kwargs)
            embeds["text"] = self.text_projection(_pooled(text_out, attention_mask))
        if pixel_values is not None:
            vision_out = self.vision_model(pixel_values=pixel_values, **tower_kwargs)
            embeds["image"] = self.visual_projection(_pooled(vision_out))
        if input_features is not None:
            audio_out = self._audio_tower(input_features, audio_attention_mask, **tower_kwargs)
            embeds["audio"] = self.audio_projection(_pooled(audio_out))
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
            loss = self._contrastive_loss(embeds, pairs, scale, bias, labels, input_ids, attention_mask)

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

    def _audio_tower(self, input_features, audio_attention_mask, **kwargs):
        """The audio tower's `BaseModelOutputWithPooling`; its pooled output averages the positions of real frames."""
        config = self.config.audio_config
        if config.model_type == MMAudioConfig.model_type:
            return self.audio_model(input_features=input_features, audio_attention_mask=audio_attention_mask, **kwargs)
        input_features, frame_mask = _audio_frames(config, input_features, audio_attention_mask)
        inputs = {"input_features": input_features}
        if self._audio_takes_frame_mask:
            inputs["input_features_mask"] = frame_mask
        outputs = self.audio_model(**inputs, **kwargs)
        return BaseModelOutputWithPooling(
            last_hidden_state=outputs.last_hidden_state,
            pooler_output=_pooled(outputs, frame_mask),  # the mean over positions of real frames
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    def _tower_frame_mask(self, input_features, audio_attention_mask):
        """The frame mask as the audio tower saw it: padded to the fixed length of a Whisper-style tower (so the
        padding added there is masked even when the batch came without a mask)."""
        if self.config.audio_config.model_type == MMAudioConfig.model_type:
            return audio_attention_mask
        return _padded_frame_mask(self.config.audio_config, input_features, audio_attention_mask)

    def _contrastive_loss(self, embeds, pairs, scale, bias, labels, input_ids, attention_mask):
        sizes = {name: e.shape[0] for name, e in embeds.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"return_loss needs aligned items (one per modality each); got batch sizes {sizes}.")
        if labels is None and input_ids is not None:
            labels = text_group_ids(input_ids, attention_mask, self.text_hash_powers)
        if labels is None:  # image + audio only: each item is its own class
            labels = torch.arange(next(iter(sizes.values())), device=self.logit_scale.device)
        # Under torch.distributed, negatives come from the global batch; the gather keeps the gradients.
        global_embeds = {name: gather_with_grad(e) for name, e in embeds.items()}
        global_labels = gather_no_grad(labels)
        positives = global_labels[:, None] == global_labels[None, :]
        loss_fn = CONTRASTIVE_LOSSES[self.config.loss_type]
        losses = [loss_fn(global_embeds[a] @ global_embeds[b].t() * scale + bias, positives) for a, b in pairs]
        return torch.stack(losses).mean()


# Model types of audio encoders that take what MMFeatureExtractor makes (log-mel `input_features` of shape
# (batch, num_mel_bins, frames)) and are known to work as the audio tower.
WHISPER_STYLE_AUDIO_ENCODERS = (
    "whisper",
    "qwen2_audio_encoder",
    "voxtral_encoder",
    "audioflamingo3_encoder",
)


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


def _check_audio_encoder(config, path):
    """Fails early, naming the problem, for an audio encoder that cannot take MMFeatureExtractor's log-mel frames."""
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    model_class = MODEL_MAPPING.get(type(config), None)
    takes = getattr(model_class, "main_input_name", None)
    if takes == "input_features" and getattr(config, "num_mel_bins", None):
        return
    problem = f"takes `{takes}`" if takes != "input_features" else "has no `num_mel_bins` in its config"
    raise ValueError(
        f"audio_encoder {path!r}: its {config.model_type!r} model {problem}, but the audio tower must take log-mel "
        "`input_features` (batch, num_mel_bins, frames), as MMFeatureExtractor makes them. Whisper-style encoders "
        f"do: model types {', '.join(WHISPER_STYLE_AUDIO_ENCODERS)}."
    )


def _audio_frames(audio_config, input_features, frame_mask):
    """What an audio tower of another architecture takes: (input_features, frame_mask) padded to
    2 * max_source_positions frames, the fixed length of Whisper-style encoders (Whisper pads every clip to 30 s).
    These encoders see their padding (most take no mask), so every masked frame holds what Whisper's extractor
    computes for silence: the clip's loudest value minus 2 (its log-mel floor, 8 below the peak, after the
    (x + 4) / 4 scaling that MMFeatureExtractor shares)."""
    frame_mask = _padded_frame_mask(audio_config, input_features, frame_mask)
    input_features = nn.functional.pad(input_features, (0, frame_mask.shape[1] - input_features.shape[2]))
    real = frame_mask.bool()[:, None, :]
    peak = input_features.masked_fill(~real, float("-inf")).amax(dim=(1, 2), keepdim=True)
    silence = torch.nan_to_num(peak - 2.0, neginf=0.0)  # a clip with no real frame has no peak
    return torch.where(real, input_features, silence), frame_mask


def _padded_frame_mask(audio_config, input_features, frame_mask):
    """The frame mask (all ones when there is none) padded with 0 to the fixed length of a Whisper-style tower."""
    batch, _, frames = input_features.shape
    if frame_mask is None:
        frame_mask = torch.ones(batch, frames, dtype=torch.long, device=input_features.device)
    expected = 2 * (getattr(audio_config, "max_source_positions", None) or 0)
    if expected and frames > expected:
        raise ValueError(
            f"The audio tower ({audio_config.model_type}) takes at most {expected} log-mel frames, got {frames}: "
            f"set the feature extractor's max_length to {expected} frames or less (its default for this tower)."
        )
    return nn.functional.pad(frame_mask, (0, max(expected - frames, 0)))


def _positions_mask(frame_mask, states):
    """The audio frame mask (B, frames) down-sampled to the tower's output positions (B, positions): the mm audio
    stem keeps every second frame; a tower of another architecture is assumed to stride evenly."""
    if frame_mask is None:
        return torch.ones(states.shape[:2], dtype=torch.long, device=states.device)
    frames, positions = frame_mask.shape[1], states.shape[1]
    stride = max(1, -(-frames // positions))  # ceil
    return frame_mask[:, ::stride][:, :positions].to(states.device).long()


def _pooled(outputs, attention_mask=None):
    """A tower's pooled output; for towers without a pooler, the mean of its last hidden states over real
    positions. The mask is per token for text; an audio frame mask is down-sampled to the hidden states."""
    if getattr(outputs, "pooler_output", None) is not None:
        return outputs.pooler_output
    hidden = outputs.last_hidden_state
    if attention_mask is not None and attention_mask.shape[-1] > hidden.shape[1]:
        # Audio towers shorten time by a stride (Whisper's stem by 2, Qwen2-Audio's by 4 with its average pool):
        # position i starts at frame i * stride, so it holds audio when that frame does.
        attention_mask = attention_mask[:, :: -(-attention_mask.shape[-1] // hidden.shape[1])]
    if attention_mask is None or attention_mask.shape[-1] != hidden.shape[1]:
        return hidden.mean(dim=1)
    return masked_mean(hidden, attention_mask)


def _width(config):
    # Most architectures call it hidden_size; a few (e.g. Swin, ConvNeXt) expose the last stage's width.
    return getattr(config, "hidden_size", None) or config.hidden_sizes[-1]
