"""The caption decoder: a causal transformer that writes text while cross-attending to the image and/or audio tower.

Each layer is pre-norm self-attention (causal, rotary positions, KV cache through transformers' `Cache` API), then
cross-attention to the encoder states (BLIP's text decoder, Li et al. 2022; Whisper's decoder), then the MLP.

With encoder states, the cache is an `EncoderDecoderCache`, as in Whisper and BART: its `self_attention_cache` grows
with the text; its `cross_attention_cache` holds each layer's keys/values of the (fixed) encoder states, computed at the
first step and reused after (`is_updated[layer_idx]`). Both halves can be `DynamicCache`s or `StaticCache`s (for
`torch.compile`). A plain `Cache` still works: it holds the self-attention keys/values, and the cross-attention
keys/values are then recomputed at every step.
"""

from collections.abc import Callable

import torch
from torch import nn
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPastAndCrossAttentions
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .modeling_mm_layers import MMMLP, MMAttention, eager_attention_forward
from .modeling_mm_utils import CACHE_NAME, MMPreTrainedModel

try:  # flat Hub folder (remote code)
    from .configuration_mm import MMDecoderConfig
except ImportError:  # installed package
    from configuration_mm import MMDecoderConfig


class MMRotaryEmbedding(nn.Module):
    """cos/sin tables of rotary position embeddings (RoFormer, Su et al. 2021) for any position ids.

    Rotary rather than learned positions: generation past `max_position_embeddings` (a pipeline's default
    `max_new_tokens=256`, say) degrades instead of failing on an embedding index. The frequencies are recomputed
    per call rather than kept in a buffer: a few dozen flops, and nothing for `from_pretrained` to re-initialise.
    """

    def __init__(self, config):
        super().__init__()
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.base = config.rope_theta

    @torch.no_grad()
    def forward(self, hidden_states, position_ids):
        exponents = torch.arange(0, self.head_dim, 2, dtype=torch.float, device=hidden_states.device) / self.head_dim
        inv_freq = 1.0 / (self.base**exponents)  # (head_dim / 2,)
        freqs = position_ids[:, :, None].float() * inv_freq  # (B, T, head_dim / 2)
        angles = torch.cat((freqs, freqs), dim=-1)  # (B, T, head_dim)
        return angles.cos().to(hidden_states.dtype), angles.sin().to(hidden_states.dtype)


def rotate_half(x):
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def apply_rotary_pos_emb(query, key, cos, sin):
    """Rotates (B, heads, T, head_dim) queries and keys by their positions' angles."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B, 1, T, head_dim)
    return query * cos + rotate_half(query) * sin, key * cos + rotate_half(key) * sin


def attend(module, query, key, value, attention_mask, **kwargs):
    """`module`'s attention back-end on (B, heads, T, head_dim) queries and (B, heads, S, head_dim) keys/values, then
    its `out_proj`: the part the decoder's self- and cross-attention share."""
    attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
        module.config._attn_implementation, eager_attention_forward
    )
    attn_output, attn_weights = attention_interface(
        module,
        query,
        key,
        value,
        attention_mask,
        scaling=module.scaling,
        dropout=module.dropout if module.training else 0.0,
        **kwargs,
    )
    attn_output = module.out_proj(attn_output.flatten(2).contiguous())  # (B, T, hidden)
    return attn_output, attn_weights


class MMDecoderSelfAttention(MMAttention):
    """Causal self-attention with rotary positions; past keys/values live in `cache` under `layer_idx`."""

    def __init__(self, config, layer_idx):
        super().__init__(config, is_causal=True, layer_idx=layer_idx)

    def forward(self, hidden_states, position_embeddings, attention_mask=None, cache=None, **kwargs):
        input_shape = hidden_states.shape[:-1]
        query = self.q_proj(hidden_states).view(*input_shape, -1, self.head_dim).transpose(1, 2)
        key = self.k_proj(hidden_states).view(*input_shape, -1, self.head_dim).transpose(1, 2)
        value = self.v_proj(hidden_states).view(*input_shape, -1, self.head_dim).transpose(1, 2)
        # (B, heads, T, head_dim)
        query, key = apply_rotary_pos_emb(query, key, *position_embeddings)
        if isinstance(cache, EncoderDecoderCache):
            cache = cache.self_attention_cache
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx)  # (B, heads, past + T, head_dim)
        return attend(self, query, key, value, attention_mask, **kwargs)


class MMDecoderCrossAttention(MMAttention):
    """Attention from the text to the encoder states. With an `EncoderDecoderCache`, their keys/values are projected
    once, at the first step, into its `cross_attention_cache`, and read from there at every later step."""

    def __init__(self, config, layer_idx):
        super().__init__(config, layer_idx=layer_idx)

    def forward(self, hidden_states, encoder_hidden_states, attention_mask=None, cache=None, **kwargs):
        input_shape = hidden_states.shape[:-1]
        query = self.q_proj(hidden_states).view(*input_shape, -1, self.head_dim).transpose(1, 2)  # (B, heads, T, hd)
        if not isinstance(cache, EncoderDecoderCache):
            cache = None
        if cache is not None and cache.is_updated.get(self.layer_idx):
            cached = cache.cross_attention_cache.layers[self.layer_idx]
            key, value = cached.keys, cached.values  # (B, heads, N, head_dim)
        else:
            kv_shape = (*encoder_hidden_states.shape[:-1], -1, self.head_dim)
            key = self.k_proj(encoder_hidden_states).view(kv_shape).transpose(1, 2)
            value = self.v_proj(encoder_hidden_states).view(kv_shape).transpose(1, 2)  # (B, heads, N, head_dim)
            if cache is not None:
                key, value = cache.cross_attention_cache.update(key, value, self.layer_idx)
                cache.is_updated[self.layer_idx] = True
        return attend(self, query, key, value, attention_mask, **kwargs)


class MMDecoderLayer(GradientCheckpointingLayer):
    """x + self_attn(norm(x)), then x + encoder_attn(norm(x), encoder states), then x + mlp(norm(x))."""

    def __init__(self, config, layer_idx):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = MMDecoderSelfAttention(config, layer_idx)
        self.encoder_attn_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.encoder_attn = MMDecoderCrossAttention(config, layer_idx)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = MMMLP(config)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(
        self,
        hidden_states,
        position_embeddings,
        attention_mask=None,
        encoder_hidden_states=None,
        encoder_attention_mask=None,
        cache=None,
        **kwargs,
    ):
        attn_output, self_weights = self.self_attn(
            self.layer_norm1(hidden_states), position_embeddings, attention_mask, cache, **kwargs
        )
        hidden_states = hidden_states + self.dropout(attn_output)
        cross_weights = None
        if encoder_hidden_states is not None:  # without media the decoder is a plain language model
            attn_output, cross_weights = self.encoder_attn(
                self.encoder_attn_layer_norm(hidden_states),
                encoder_hidden_states,
                encoder_attention_mask,
                cache,
                **kwargs,
            )
            hidden_states = hidden_states + self.dropout(attn_output)
        hidden_states = hidden_states + self.dropout(self.mlp(self.layer_norm2(hidden_states)))
        return hidden_states, self_weights, cross_weights


class MMTextDecoder(MMPreTrainedModel):
    """Token embeddings, `num_hidden_layers` decoder layers and a final layer norm (the LM head lives in
    `MMForConditionalGeneration`).

    Example:
    ```python
    >>> import torch
    >>> from configuration_mm import MMConfig
    >>> from modeling_mm.modeling_mm_decoder import MMTextDecoder
    >>> decoder = MMTextDecoder(MMConfig.from_preset("tiny").decoder_config)
    >>> out = decoder(input_ids=torch.tensor([[1, 5, 9]]), encoder_hidden_states=torch.randn(1, 16, 32))
    >>> out.last_hidden_state.shape
    torch.Size([1, 3, 32])
    ```
    """

    config_class = MMDecoderConfig
    main_input_name = "input_ids"
    input_modalities = ("text",)
    _no_split_modules = ["MMDecoderLayer"]

    def __init__(self, config):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.rotary_emb = MMRotaryEmbedding(config)
        self.layers = nn.ModuleList([MMDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        encoder_hidden_states=None,
        encoder_attention_mask=None,
        cache=None,
        inputs_embeds=None,
        use_cache=None,
        output_attentions=None,
        output_hidden_states=None,
        **kwargs,
    ):
        """Decodes `input_ids` (B, T) attending causally to themselves (and the cache) and fully to
        `encoder_hidden_states` (B, N, hidden_size), whose padding `encoder_attention_mask` (B, N) marks with 0.

        `attention_mask` (B, past + T) marks padding with 0 on either side; `position_ids` (B, T) default to the
        count of real tokens before each one, so a left-padded row is positioned as if it were alone.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("MMTextDecoder needs exactly one of input_ids or inputs_embeds.")
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        # Off unless asked for (`generate` asks): training and scoring have no use for a cache. Under gradient
        # checkpointing the recomputed layers would append their keys twice.
        use_cache = bool(use_cache) and not (self.gradient_checkpointing and self.training)
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if not use_cache:
            cache = None
        elif cache is None and encoder_hidden_states is not None:
            cache = EncoderDecoderCache(DynamicCache(config=self.config), DynamicCache(config=self.config))
        elif cache is None:
            cache = DynamicCache(config=self.config)
        if position_ids is None:
            position_ids = self._position_ids(inputs_embeds, attention_mask, cache)

        # The cache goes in by position: transformers 5.24 renamed this parameter `past_key_values` -> `cache`.
        causal_mask = create_causal_mask(self.config, inputs_embeds, attention_mask, cache, position_ids)
        cross_mask = None
        if encoder_hidden_states is not None:
            cross_mask = create_bidirectional_mask(
                config=self.config,
                inputs_embeds=inputs_embeds,
                attention_mask=encoder_attention_mask,
                encoder_hidden_states=encoder_hidden_states,
            )
        position_embeddings = self.rotary_emb(inputs_embeds, position_ids)

        hidden_states = inputs_embeds
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        all_self = () if output_attentions else None
        all_cross = () if output_attentions and encoder_hidden_states is not None else None
        for layer in self.layers:
            hidden_states, self_weights, cross_weights = layer(
                hidden_states,
                position_embeddings,
                causal_mask,
                encoder_hidden_states,
                cross_mask,
                cache,
            )
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            if all_self is not None:
                all_self += (self_weights,)
            if all_cross is not None:
                all_cross += (cross_weights,)
        hidden_states = self.layer_norm(hidden_states)
        if output_hidden_states:  # the last entry is what the LM head reads, as in GPT-2
            all_hidden_states = all_hidden_states[:-1] + (hidden_states,)
        return BaseModelOutputWithPastAndCrossAttentions(
            last_hidden_state=hidden_states,
            **{CACHE_NAME: cache},
            hidden_states=all_hidden_states,
            attentions=all_self,
            cross_attentions=all_cross,
        )

    @staticmethod
    def _position_ids(inputs_embeds, attention_mask, cache):
        """(B, T) positions of the new tokens: real tokens before them, padding not counted."""
        length = inputs_embeds.shape[1]
        past = cache.get_seq_length() if cache is not None else 0
        if attention_mask is None or attention_mask.ndim != 2:
            return (torch.arange(length, device=inputs_embeds.device) + past).unsqueeze(0)
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        return positions[:, -length:]
