"""MMForConditionalGeneration: text written from an image and/or an audio clip (captioning, speech to text,
prompted generation), on the same towers as `MMModel`, so one checkpoint holds both heads.

Design: cross-attention, not a prefix. The image/audio tower states are projected to the decoder's width and every
decoder layer cross-attends to them (BLIP's captioning decoder, Li et al. 2022; Whisper). The decoder itself stays a
plain decoder-only language model for `GenerationMixin`:
- its self-attention cache's length is the text's length. `generate` sizes a `StaticCache` from the prompt and
  `max_new_tokens` alone, and `torch.compile` sees one fixed-shape step. A prefix would put a variable number of media
  tokens (audio length varies) into the cache, positions and masks, which `generate` does not count when it sizes a
  static cache;
- a padded prompt batch only pads the text (left, as any decoder-only model), and the audio padding is one
  cross-attention mask, so a padded batch decodes exactly as its rows alone;
- the media are encoded once per `generate` call (`get_encoder_hidden_states`) and handed to every step as model
  kwargs, which `generate` already expands for beam search and sampling.
The cross-attention keys/values of the (fixed) encoder states, 2·N·D² multiply-adds per layer for N media positions
(for the base preset's 196 patches, several times the decoder's own per-token work), are computed once per `generate`
call too: `generate` builds only a self-attention cache for a model that is not `is_encoder_decoder`, so
`_prepare_cache_for_generation` pairs it with a cross-attention cache in an `EncoderDecoderCache`, as `generate` does
for encoder-decoder models (Whisper, BART). Being `is_encoder_decoder` instead would make `generate` take the prompt as
`decoder_input_ids`, which the image-text-to-text pipeline (it passes `input_ids`) does not.
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache, StaticCache
from transformers.generation import GenerationMixin
from transformers.utils import ModelOutput

from .modeling_mm import MMModel, _positions_mask, _width
from .modeling_mm_decoder import MMTextDecoder
from .modeling_mm_utils import MMConfig, MMPreTrainedModel


@dataclass
class MMGenerationOutput(ModelOutput):
    """Output of `MMForConditionalGeneration.forward`.

    Attributes:
        loss: `caption_loss_weight * caption_loss + contrastive_loss_weight * contrastive_loss` (with `labels`).
        logits: (B, T, vocab_size) next-token scores.
        past_key_values: the decoder's cache (with `use_cache=True`): an `EncoderDecoderCache` when it attended to
            media, else the self-attention `Cache`.
        caption_loss: mean cross-entropy of the next token over the labelled positions.
        contrastive_loss: `MMModel`'s loss on the same batch, when `config.contrastive_loss_weight > 0`.
        hidden_states, attentions, cross_attentions: the decoder's, on request.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    past_key_values: Cache | None = None
    caption_loss: torch.FloatTensor | None = None
    contrastive_loss: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    cross_attentions: tuple[torch.FloatTensor, ...] | None = None


class MMForConditionalGeneration(MMPreTrainedModel, GenerationMixin):
    """`MMModel`'s towers (under `self.mm`) plus a causal text decoder that cross-attends to the image and/or audio
    states. `labels` give the captioning loss; `config.contrastive_loss_weight > 0` adds `MMModel`'s contrastive loss
    on the same batch (CoCa, Yu et al. 2022). `generate` does greedy, beam and sampled decoding with any cache.

    An `MMModel` checkpoint loads into it (the decoder starts untrained) and its checkpoints load into `MMModel`.

    Text format: the decoder reads `<s> [prompt] caption </s>`, i.e. what the processor's tokenizer makes of
    `prompt + caption`. For training, `labels` are `input_ids` with -100 at padding (and at prompt tokens); the
    model shifts them. For `generate`, a prompt is the processor's encoding of the prompt alone: its closing `</s>`
    is dropped and its padding moved to the left, so `generate(**processor(text=..., images=...))` just works.

    Example:
    ```python
    >>> import torch
    >>> from configuration_mm import MMConfig
    >>> from modeling_mm import MMForConditionalGeneration
    >>> model = MMForConditionalGeneration(MMConfig.from_preset("tiny")).eval()
    >>> pixel_values = torch.randn(2, 3, 32, 32)
    >>> captions = torch.tensor([[1, 40, 41, 2], [1, 42, 2, 0]])
    >>> labels = captions.masked_fill(captions == 0, -100)
    >>> out = model(input_ids=captions, attention_mask=(captions != 0).long(), pixel_values=pixel_values, labels=labels)
    >>> out.loss.ndim, out.logits.shape
    (0, torch.Size([2, 4, 512]))
    >>> model.generate(pixel_values=pixel_values, max_new_tokens=5, do_sample=False).shape[0]
    2
    ```
    """

    config_class = MMConfig
    main_input_name = "input_ids"
    _tied_weights_keys = {"lm_head.weight": "decoder.embed_tokens.weight"}
    _no_split_modules = MMPreTrainedModel._no_split_modules + ["MMDecoderLayer"]
    _can_compile_fullgraph = True
    # The loss is a per-batch mean (two of them, in CoCa mode): let `Trainer` scale it for gradient accumulation.
    accepts_loss_kwargs = False

    def __init__(self, config):
        super().__init__(config)
        self.mm = MMModel._from_config(config)
        decoder_width = config.decoder_config.hidden_size
        self.decoder = MMTextDecoder._from_config(config.decoder_config)
        # The towers' states, in the decoder's width; a separate map per modality also tells the decoder which is which.
        self.image_to_decoder = nn.Linear(_width(config.vision_config), decoder_width)
        self.audio_to_decoder = nn.Linear(_width(config.audio_config), decoder_width)
        self.lm_head = nn.Linear(decoder_width, config.decoder_config.vocab_size, bias=False)
        self.post_init()
        # By default, write at most as many tokens as the longest text the decoder learns from (a pipeline's own
        # default, e.g. 256, would let an undertrained model ramble); a `max_new_tokens` argument overrides it.
        self.generation_config.max_new_tokens = config.decoder_config.max_position_embeddings

    def get_input_embeddings(self):
        return self.decoder.embed_tokens

    def set_input_embeddings(self, value):
        self.decoder.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def get_encoder_hidden_states(self, pixel_values=None, input_features=None, audio_attention_mask=None):
        """What the decoder attends to: the image patches and/or audio frames, in the decoder's width.

        Returns `(encoder_hidden_states (B, N, hidden), encoder_attention_mask (B, N) or None)`. Compute them once
        and pass them to `forward`/`generate` to decode several prompts for the same media.
        """
        states, _ = self._encode(pixel_values, input_features, audio_attention_mask)
        return states

    def _encode(self, pixel_values, input_features, audio_attention_mask, contrastive_text=None):
        """Runs each tower once. With `contrastive_text` (input_ids, attention_mask), through `MMModel.forward`, so the
        contrastive loss reuses the same tower outputs; returns ((states, mask), contrastive loss or None)."""
        if pixel_values is None and input_features is None:
            raise ValueError(
                "MMForConditionalGeneration needs an image (pixel_values) and/or audio (input_features) to "
                "condition on, or precomputed encoder_hidden_states."
            )
        contrastive_loss = None
        if contrastive_text is not None:
            out = self.mm(
                input_ids=contrastive_text[0],
                attention_mask=contrastive_text[1],
                pixel_values=pixel_values,
                input_features=input_features,
                audio_attention_mask=audio_attention_mask,
                return_loss=True,
            )
            vision_out, audio_out, contrastive_loss = out.vision_model_output, out.audio_model_output, out.loss
        else:
            vision_out = None if pixel_values is None else self.mm.vision_model(pixel_values=pixel_values)
            audio_out = None
            if input_features is not None:
                audio_out = self.mm._audio_tower(input_features, audio_attention_mask)

        states, masks, frame_mask = [], [], None
        if vision_out is not None:
            image_states = self.image_to_decoder(vision_out.last_hidden_state)  # (B, patches, D)
            states.append(image_states)
            masks.append(torch.ones(image_states.shape[:2], dtype=torch.long, device=image_states.device))
        if audio_out is not None:
            audio_states = self.audio_to_decoder(audio_out.last_hidden_state)  # (B, frames / 2, D)
            states.append(audio_states)
            frame_mask = self.mm._tower_frame_mask(input_features, audio_attention_mask)  # the frames the tower saw
            masks.append(_positions_mask(frame_mask, audio_states))
        mask = torch.cat(masks, dim=1)
        # Images are never padded: without an audio frame mask there is none. An all-ones audio mask is kept
        # (checking it would be a data-dependent branch, a graph break under torch.compile and a GPU sync); the
        # decoder's mask function drops an all-ones mask outside compile anyway.
        mask = None if frame_mask is None else mask
        return (torch.cat(states, dim=1), mask), contrastive_loss

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        pixel_values=None,
        input_features=None,
        audio_attention_mask=None,
        encoder_hidden_states=None,
        encoder_attention_mask=None,
        labels=None,
        past_key_values=None,
        position_ids=None,
        inputs_embeds=None,
        use_cache=None,
        output_attentions=None,
        output_hidden_states=None,
        logits_to_keep=0,
        **kwargs,
    ):
        """Next-token logits for `input_ids` given the media, and with `labels` the loss.

        Args:
            input_ids, attention_mask: the text (B, T), `<s> [prompt] caption </s>`; 0 in the mask marks padding.
            pixel_values: images (B, 3, H, W). input_features, audio_attention_mask: log-mel audio (B, n_mels, frames)
                and its frame mask (B, frames). Either or both; or instead:
            encoder_hidden_states, encoder_attention_mask: from `get_encoder_hidden_states`.
            labels: (B, T) token ids to predict, -100 where no loss is taken (padding, prompt); unshifted.
            past_key_values, position_ids, use_cache: decoding state, as in any transformers causal LM.
            logits_to_keep: compute logits for the last `logits_to_keep` positions only (0 = all).
        """
        contrastive_loss = None
        if encoder_hidden_states is None and (pixel_values is not None or input_features is not None):
            contrastive = labels is not None and self.config.contrastive_loss_weight > 0 and input_ids is not None
            (encoder_hidden_states, encoder_attention_mask), contrastive_loss = self._encode(
                pixel_values,
                input_features,
                audio_attention_mask,
                contrastive_text=(input_ids, attention_mask) if contrastive else None,
            )
        outputs = self.decoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        hidden_states = outputs.last_hidden_state
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            hidden_states = hidden_states[:, -logits_to_keep:]
        logits = self.lm_head(hidden_states)  # (B, T, vocab)

        loss = caption_loss = None
        if labels is not None:
            # Position t predicts token t + 1.
            caption_loss = nn.functional.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten().to(logits.device), ignore_index=-100
            )
            loss = self.config.caption_loss_weight * caption_loss
            if contrastive_loss is not None:
                loss = loss + self.config.contrastive_loss_weight * contrastive_loss
        return MMGenerationOutput(
            loss=loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            caption_loss=caption_loss,
            contrastive_loss=contrastive_loss,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            cross_attentions=outputs.cross_attentions,
        )

    @torch.no_grad()
    def generate(
        self,
        input_ids=None,
        *,
        attention_mask=None,
        pixel_values=None,
        input_features=None,
        audio_attention_mask=None,
        encoder_hidden_states=None,
        encoder_attention_mask=None,
        **kwargs,
    ):
        """`GenerationMixin.generate` after encoding the media once; every generation argument works
        (`max_new_tokens`, `num_beams`, `do_sample`, `cache_implementation="static"`, ...).

        Without `input_ids` each item starts from `<s>` (captioning, speech to text); with them (a prompt from the
        processor, padded on either side) it continues the prompt. Returns `(B * num_return_sequences, length)`
        token ids: the left-padded prompt followed by the new tokens. Decode with `processor.batch_decode(...,
        skip_special_tokens=True)`.

        Example:
        ```python
        >>> import torch
        >>> from configuration_mm import MMConfig
        >>> from modeling_mm import MMForConditionalGeneration
        >>> model = MMForConditionalGeneration(MMConfig.from_preset("tiny")).eval()
        >>> audio = torch.randn(1, 32, 50)
        >>> model.generate(input_features=audio, num_beams=2, max_new_tokens=4).shape[1] <= 5
        True
        ```
        """
        if input_ids is None:
            input_ids = kwargs.pop("inputs", None)
        if encoder_hidden_states is None and (pixel_values is not None or input_features is not None):
            encoder_hidden_states, encoder_attention_mask = self.get_encoder_hidden_states(
                pixel_values, input_features, audio_attention_mask
            )
        if input_ids is None and encoder_hidden_states is None:
            raise ValueError("generate needs a prompt (input_ids), media (pixel_values/input_features), or both.")
        batch_size = encoder_hidden_states.shape[0] if encoder_hidden_states is not None else input_ids.shape[0]
        input_ids, attention_mask = self._as_prompt(input_ids, attention_mask, batch_size)
        return super().generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask,
            **kwargs,
        )

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs):
        """`GenerationMixin`'s self-attention cache, paired with a cross-attention cache of the same kind (a
        `StaticCache` as long as the encoder states, for `cache_implementation="static"`) so each layer projects the
        encoder states to keys/values once per `generate` call. A cache the caller passed in is left as it is: the
        keys/values are then recomputed at every step."""
        super()._prepare_cache_for_generation(generation_config, model_kwargs, *args, **kwargs)
        cache = model_kwargs.get("past_key_values")
        encoder_hidden_states = model_kwargs.get("encoder_hidden_states")
        if (
            cache is None
            or encoder_hidden_states is None
            or isinstance(cache, EncoderDecoderCache)
            or getattr(cache, "_is_user_defined", False)
        ):
            return
        config = self.config.get_text_config(decoder=True)
        if isinstance(cache, StaticCache):
            cross_cache = StaticCache(config=config, max_cache_len=encoder_hidden_states.shape[1])
        else:
            cross_cache = DynamicCache(config=config)
        model_kwargs["past_key_values"] = EncoderDecoderCache(cache, cross_cache)

    def _as_prompt(self, input_ids, attention_mask, batch_size):
        """Makes the processor's encoding of a prompt, `<s> prompt </s>` padded on the right, into what a decoder-only
        model continues: `<s> prompt`, padded on the left. Without a prompt, each row is `<s>`."""
        config = self.config.decoder_config
        device = self.device
        if input_ids is None:
            input_ids = torch.full((batch_size, 1), config.bos_token_id, dtype=torch.long, device=device)
            return input_ids, torch.ones_like(input_ids)
        real = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        # Drop each row's closing </s>: a prompt ends where the answer begins.
        last = (real.long() * torch.arange(1, real.shape[1] + 1, device=real.device)).argmax(dim=1, keepdim=True)
        closes = real.gather(1, last) & (input_ids.gather(1, last) == config.eos_token_id)
        real = real.scatter(1, last, real.gather(1, last) & ~closes)
        # Start each row with <s> (a prompt tokenized with add_special_tokens=False has none): training texts do.
        first = real.long().argmax(dim=1, keepdim=True)
        opens = (input_ids.gather(1, first) == config.bos_token_id) & real.gather(1, first)
        input_ids = torch.cat([torch.full_like(input_ids[:, :1], config.bos_token_id), input_ids], dim=1)
        real = torch.cat([~opens, real], dim=1)
        # A stable sort on the mask moves padding (and dropped tokens) to the left and keeps the real tokens' order.
        order = torch.sort(real.long(), dim=1, stable=True).indices
        real = real.gather(1, order)
        input_ids = input_ids.gather(1, order).masked_fill(~real, config.pad_token_id)
        keep = int(real.sum(dim=1).max())
        return input_ids[:, -keep:], real[:, -keep:].long()
