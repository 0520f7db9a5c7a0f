"""The transformer building blocks every mm tower shares: attention, MLP, pre-norm encoder layer, encoder stack.

Names follow CLIP/SigLIP (`q_proj/k_proj/v_proj/out_proj`, `fc1/fc2`, `layer_norm1/2`) so PEFT target modules,
checkpoints and readers carry over. Attention dispatches through transformers' attention interface, so
`attn_implementation="eager" | "sdpa" | "flex_attention" | "flash_attention_2"` works with one eager fallback; a
tower whose config sets `attention_type` to "local", "block_sparse" or "linear" uses that function instead
(modeling_mm_long_attention.py).
"""

from collections.abc import Callable

import torch
from torch import nn
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_outputs import BaseModelOutput, BaseModelOutputWithPooling
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .modeling_mm_long_attention import LONG_INPUT_ATTENTION_FUNCTIONS
from .modeling_mm_utils import MMPreTrainedModel


def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Reference attention: softmax(q k^T * scaling + mask) v, with the mask additive (0 or a large negative)."""
    attn_weights = torch.matmul(query, key.transpose(-1, -2)) * scaling  # (B, heads, q_len, kv_len)
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask[:, :, :, : key.shape[-2]]
    attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()  # (B, q_len, heads, head_dim)
    return attn_output, attn_weights


class MMAttention(nn.Module):
    """Multi-head attention. With `key_value_states` it attends to another sequence (cross-attention)."""

    def __init__(self, config, is_causal=False, layer_idx=None):
        super().__init__()
        self.config = config
        self.embed_dim = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = self.embed_dim // self.num_heads
        self.scaling = self.head_dim**-0.5
        self.dropout = config.attention_dropout
        self.is_causal = is_causal
        self.layer_idx = layer_idx
        self.q_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.k_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.v_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.out_proj = nn.Linear(self.embed_dim, self.embed_dim)

    def heads(self, projection, states):
        """`projection(states)` split into heads: (B, T, hidden) -> (B, heads, T, head_dim)."""
        return projection(states).view(*states.shape[:-1], -1, self.head_dim).transpose(1, 2)

    def attend(self, query, key, value, attention_mask, **kwargs):
        """The configured attention on (B, heads, T, head_dim) queries and (B, heads, S, head_dim) keys/values, then
        `out_proj`: (B, T, hidden). A long-input `attention_type` of an encoder tower, else transformers' attention
        interface with eager as the fallback (the decoder's config only allows "full")."""
        attention_interface: Callable = LONG_INPUT_ATTENTION_FUNCTIONS.get(self.config.attention_type)
        if attention_interface is None:  # "full": the attention interface's back-end
            attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(
                self.config._attn_implementation, eager_attention_forward
            )
        attn_output, attn_weights = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            scaling=self.scaling,
            dropout=self.dropout if self.training else 0.0,
            **kwargs,
        )
        return self.out_proj(attn_output.flatten(2).contiguous()), attn_weights

    def forward(self, hidden_states, attention_mask=None, key_value_states=None, **kwargs):
        kv_input = hidden_states if key_value_states is None else key_value_states
        query = self.heads(self.q_proj, hidden_states)  # (B, heads, T, head_dim)
        key, value = self.heads(self.k_proj, kv_input), self.heads(self.v_proj, kv_input)  # (B, heads, S, head_dim)
        is_causal = self.is_causal and key_value_states is None
        return self.attend(query, key, value, attention_mask, is_causal=is_causal, **kwargs)


class MMMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.activation_fn = ACT2FN[config.hidden_act]
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, hidden_states):
        return self.fc2(self.activation_fn(self.fc1(hidden_states)))


class MMEncoderLayer(GradientCheckpointingLayer):
    """Pre-norm transformer layer: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = MMAttention(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = MMMLP(config)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, hidden_states, attention_mask=None, **kwargs):
        attn_output, attn_weights = self.self_attn(self.layer_norm1(hidden_states), attention_mask, **kwargs)
        hidden_states = hidden_states + self.dropout(attn_output)
        hidden_states = hidden_states + self.dropout(self.mlp(self.layer_norm2(hidden_states)))
        return hidden_states, attn_weights


class MMEncoder(nn.Module):
    """A stack of `config.num_hidden_layers` encoder layers; collects hidden states and attentions on request."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList([MMEncoderLayer(config) for _ in range(config.num_hidden_layers)])
        self.gradient_checkpointing = False

    def forward(self, hidden_states, attention_mask=None, output_attentions=False, output_hidden_states=False):
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for layer in self.layers:
            # The flag reaches the attention back-end: transformers' sdpa and flash back-ends warn that they return
            # no weights (mm warns as transformers does, rather than switching back-end behind the caller's back).
            hidden_states, attn_weights = layer(hidden_states, attention_mask, output_attentions=output_attentions)
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            if output_attentions:
                all_attentions += (attn_weights,)
        return BaseModelOutput(
            last_hidden_state=hidden_states, hidden_states=all_hidden_states, attentions=all_attentions
        )


def masked_mean(hidden_states, mask):
    """Mean over the sequence of the positions where `mask` is 1: (B, T, D), (B, T) -> (B, D)."""
    if mask is None:
        return hidden_states.mean(dim=1)
    mask = mask.to(hidden_states.dtype).unsqueeze(-1)
    return (hidden_states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)



class MMTowerModel(MMPreTrainedModel):
    """What every tower does after its embeddings: bidirectional encoder, final layer norm, masked mean pooling.

    The text, vision and audio towers differ only in how they embed their input (tokens, patches, mel frames)
    and which positions are padding; they subclass this and call `self.encode(embeddings, padding_mask)`.
    With `config.num_global_tokens`, that many learned `global_tokens` go in front of the embeddings; the outputs
    and the pooling leave them out.
    """

    def __init__(self, config):
        super().__init__(config)
        self.encoder = MMEncoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.num_global_tokens = config.num_global_tokens
        if self.num_global_tokens:
            self.global_tokens = nn.Parameter(torch.zeros(1, self.num_global_tokens, config.hidden_size))

    def encode(self, embeddings, padding_mask=None, output_attentions=None, output_hidden_states=None):
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        embeddings = embeddings.contiguous()  # the stems' transposes leave (B, D, T) strides: copy once, not per layer
        attention_mask = padding_mask
        num_global = self.num_global_tokens
        if num_global:
            embeddings = torch.cat((self.global_tokens.expand(embeddings.shape[0], -1, -1), embeddings), dim=1)
            if padding_mask is not None:
                attention_mask = nn.functional.pad(padding_mask, (num_global, 0), value=1)
        if self.config.attention_type == "full":
            # The 2-D padding mask becomes what the attention back-end wants (additive 4-D, BlockMask, or None).
            attention_mask = create_bidirectional_mask(
                config=self.config, inputs_embeds=embeddings, attention_mask=attention_mask
            )
        # else the long-input functions take the 2-D mask itself: a (T, T) mask would cost what they save.
        encoder_outputs = self.encoder(
            embeddings,
            attention_mask,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        last_hidden_state = self.post_layernorm(encoder_outputs.last_hidden_state[:, num_global:])
        hidden_states = encoder_outputs.hidden_states
        if num_global and hidden_states is not None:
            hidden_states = tuple(state[:, num_global:] for state in hidden_states)
        return BaseModelOutputWithPooling(
            last_hidden_state=last_hidden_state,
            pooler_output=masked_mean(last_hidden_state, padding_mask),
            hidden_states=hidden_states,
            attentions=encoder_outputs.attentions,
        )
