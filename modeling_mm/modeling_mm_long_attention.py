"""Attention for long inputs: local (sliding-window), block-sparse and linear attention for the encoder towers.

A tower picks one with its config's `attention_type` ("full" is the default and goes to transformers' attention
interface as before). The three functions take the attention interface's arguments
`(module, query, key, value, attention_mask, scaling, dropout, **kwargs)` on (B, heads, T, head_dim) tensors and
return `(output (B, T, heads, head_dim), None)`; unlike the interface's back-ends they take the 2-D padding mask
(B, T), 1 = real position, or None, because a (T, T) mask would cost the memory they exist to save.

- local: position i attends to the positions j with |i - j| <= `attention_window`, computed by blocks of the
  window's size against the previous, own and next block (Longformer's sliding chunks, Beltagy et al. 2020), so
  time and memory grow as T * window, not T^2.
- block_sparse: blocks of `attention_block_size` positions; query block i attends to key blocks i, i +- 1 (BigBird's
  sliding blocks, Zaheer et al. 2020) and i +- 2, 4, 8, ... (power-of-two strides, LogSparse, Li et al. 2019) that
  lie in the sequence. The strides replace BigBird's random blocks: the pattern is the same for every input, so a
  padded item sees exactly what it sees alone, and any position reaches any other in O(log T) layers. Cost
  T * block_size * (3 + 2 log2(T / block_size)).
- linear: softmax(q k^T) is replaced by phi(q) phi(k)^T with phi = elu + 1 (Katharopoulos et al. 2020), computed as
  phi(q) (sum_j phi(k_j) v_j^T) / (phi(q) sum_j phi(k_j)): time and memory grow as T. It has no attention
  probabilities, so no attention dropout.

Local and block-sparse attention may add `num_global_tokens` learned tokens in front of the sequence
(`MMTowerModel.encode`); they attend to every position and every position attends to them (BigBird's global tokens).
Here they are the first `module.config.num_global_tokens` positions of query, key and value.
"""

import torch
from torch import nn

def local_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Sliding-window attention: |i - j| <= config.attention_window (plus the global tokens)."""
    config = module.config
    length = query.shape[2] - config.num_global_tokens
    # A window covering the whole sequence is one block: full attention, without padding to the window's size.
    block_size = max(1, min(config.attention_window, length))
    offsets = torch.tensor([-1, 0, 1], device=query.device)
    return _block_attention(
        query, key, value, attention_mask, scaling, dropout, module.training,
        config.num_global_tokens, block_size, offsets, window=config.attention_window,
    )  # fmt: skip


def block_sparse_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Block-sparse attention: key blocks i, i +- 1, i +- 2, i +- 4, ... of query block i (plus the global tokens)."""
    config = module.config
    block_size = config.attention_block_size
    num_blocks = -(-(query.shape[2] - config.num_global_tokens) // block_size)
    return _block_attention(
        query, key, value, attention_mask, scaling, dropout, module.training,
        config.num_global_tokens, block_size, block_offsets(num_blocks).to(query.device),
    )  # fmt: skip


def block_offsets(num_blocks):
    """The key-block offsets every query block attends to: 0, +-1, +-2, +-4, ... below `num_blocks`."""
    strides = [1]
    while strides[-1] * 2 < num_blocks:
        strides.append(strides[-1] * 2)
    return torch.tensor([0] + [sign * s for s in strides for sign in (-1, 1)])


def linear_attention_forward(module, query, key, value, attention_mask, eps=1e-6, **kwargs):
    """Linear attention with the elu + 1 feature map; padded keys contribute nothing."""
    query = nn.functional.elu(query) + 1.0
    key = nn.functional.elu(key) + 1.0
    if attention_mask is not None:
        key = key * attention_mask[:, None, :, None].to(key.dtype)
    key_values = torch.einsum("bhnd,bhne->bhde", key, value)  # (B, heads, head_dim, head_dim)
    normalizer = torch.einsum("bhnd,bhd->bhn", query, key.sum(dim=2))  # (B, heads, T)
    output = torch.einsum("bhnd,bhde->bhne", query, key_values) / normalizer.clamp(min=eps)[..., None]
    return output.transpose(1, 2).contiguous(), None  # (B, T, heads, head_dim)


LONG_INPUT_ATTENTION_FUNCTIONS = {
    "local": local_attention_forward,
    "block_sparse": block_sparse_attention_forward,
    "linear": linear_attention_forward,
}


def _block_attention(query, key, value, padding_mask, scaling, dropout, training, num_global, block_size, offsets,
                     window=None):  # fmt: skip
    """Softmax attention in which query block i sees key blocks i + `offsets` (those inside the sequence), the first
    `num_global` (global) positions, and, with `window`, only keys at most `window` positions away."""
    batch, heads, _, head_dim = query.shape
    if padding_mask is None:
        padding_mask = torch.ones(batch, query.shape[2], dtype=torch.bool, device=query.device)
    padding_mask = padding_mask.bool()
    global_output = None
    if num_global:  # the global tokens attend to every position, as in full attention
        global_output = nn.functional.scaled_dot_product_attention(
            query[:, :, :num_global], key, value, attn_mask=padding_mask[:, None, None, :],
            dropout_p=dropout if training else 0.0, scale=scaling,
        )  # fmt: skip
    global_mask, padding_mask = padding_mask[:, :num_global], padding_mask[:, num_global:]
    global_key, key = key[:, :, :num_global], key[:, :, num_global:]
    global_value, value = value[:, :, :num_global], value[:, :, num_global:]
    query = query[:, :, num_global:]
    length = query.shape[2]
    num_blocks = -(-length // block_size)
    pad = num_blocks * block_size - length
    query, key, value = (nn.functional.pad(x, (0, 0, 0, pad)) for x in (query, key, value))
    padding_mask = nn.functional.pad(padding_mask, (0, pad))

    # Which key block each query block reads: (num_blocks, K); blocks outside the sequence are masked out.
    key_blocks = torch.arange(num_blocks, device=query.device)[:, None] + offsets[None, :]
    block_exists = (key_blocks >= 0) & (key_blocks < num_blocks)
    key_blocks = key_blocks.clamp(0, num_blocks - 1)
    blocked = (num_blocks, block_size, head_dim)
    query = query.reshape(batch, heads, *blocked)  # (B, heads, n_blocks, block, head_dim)
    key = key.reshape(batch, heads, *blocked)[:, :, key_blocks].flatten(3, 4)  # (B, heads, n_blocks, K*block, hd)
    value = value.reshape(batch, heads, *blocked)[:, :, key_blocks].flatten(3, 4)
    keep = padding_mask.reshape(batch, num_blocks, block_size)[:, key_blocks] & block_exists[None, :, :, None]
    keep = keep.flatten(2)[:, None, :, None, :]  # (B, 1, n_blocks, 1, K*block)
    if window is not None:
        positions = torch.arange(num_blocks * block_size, device=query.device).reshape(num_blocks, block_size)
        key_positions = positions[key_blocks].flatten(1)  # (n_blocks, K*block)
        distance = positions[:, :, None] - key_positions[:, None, :]  # (n_blocks, block, K*block)
        keep = keep & (distance.abs() <= window)

    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling  # (B, heads, n_blocks, block, K*block)
    if num_global:  # every position also attends to the global tokens: their scores go in front
        global_scores = torch.matmul(query, global_key[:, :, None].transpose(-1, -2)) * scaling  # (..., block, G)
        scores = torch.cat((global_scores, scores), dim=-1)
        keep = torch.cat((global_mask[:, None, None, None, :].expand(*keep.shape[:-1], -1), keep), dim=-1)
    # A finite fill, not -inf: a padded query whose window holds only padding gets a uniform row instead of NaN.
    scores = scores.masked_fill(~keep, torch.finfo(scores.dtype).min)
    probs = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    probs = nn.functional.dropout(probs, p=dropout, training=training)
    output = torch.matmul(probs[..., num_global:], value)  # (B, heads, n_blocks, block, head_dim)
    if num_global:
        output = output + torch.matmul(probs[..., :num_global], global_value[:, :, None])
    output = output.flatten(2, 3)[:, :, :length]  # (B, heads, T, head_dim)
    if global_output is not None:
        output = torch.cat((global_output, output), dim=2)
    return output.transpose(1, 2).contiguous(), None
