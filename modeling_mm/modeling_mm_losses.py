"""Contrastive losses over a batch of paired embeddings, where repeated captions are positives, not negatives.

Real data repeats texts (class-name prompts, templated captions). Plain CLIP/SigLIP would push two images with
the same caption apart; here every pair of items that share a group id (a label, or identical text) is a positive.
Under torch.distributed the embeddings are gathered from every process with their gradients (as open_clip's
`gather_features(gather_with_grad=True)`), so the negatives come from the global batch.
"""

import torch
import torch.distributed as dist
from torch import nn

# Two large primes for the text hash: products of values below 2**31 stay inside int64.
_HASH_MOD = 2_147_483_647
_HASH_BASE = 1_000_003


def hash_powers(max_length):
    """BASE**i mod MOD for i < max_length, the weights of `text_group_ids` (computed once, kept as a buffer)."""
    powers = [1]
    for _ in range(max_length - 1):
        powers.append(powers[-1] * _HASH_BASE % _HASH_MOD)
    return torch.tensor(powers, dtype=torch.long)


def text_group_ids(input_ids, attention_mask, powers):
    """One int64 id per row, equal for rows holding the same tokens (padding ignored): (B, L) -> (B,).

    A polynomial hash rather than `torch.unique(dim=0)`, so rows padded to different lengths on different
    processes still agree after an all-gather, and the forward stays free of graph breaks under torch.compile.
    """
    ids = input_ids.long() + 1
    if attention_mask is not None:
        ids = ids * attention_mask.long()
    # Each product is below 2**31 * 2**31 = 2**62; the sum of L < 2**32 terms below 2**31 also fits in int64.
    return ((ids % _HASH_MOD) * powers[: ids.shape[-1]] % _HASH_MOD).sum(-1) % _HASH_MOD


def gather_with_grad(tensor):
    """Concatenates `tensor` from every process along dim 0, keeping the gradient path to each process's part."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    # torch 2.13 deprecates `torch.distributed.nn.functional.all_gather` (a FutureWarning on every step) for this
    # functional collective, whose backward reduce-scatters each part's gradient back to its process.
    try:
        from torch.distributed._functional_collectives import all_gather_single_autograd
    except ImportError:  # older torch, where the autograd all_gather is not deprecated
        return torch.cat(torch.distributed.nn.functional.all_gather(tensor), dim=0)
    return all_gather_single_autograd(tensor.contiguous(), 0, dist.group.WORLD)


def gather_no_grad(tensor):
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def hardness_weights(logits, positives, beta, dim):
    """Weights of the negatives along `dim` (detached): `n_neg * softmax(beta * logits)` over each row's (dim=1) or
    column's (dim=0) negatives, 1 for positives; with `beta=0`, all ones.

    The hardness-weighted InfoNCE of Robinson et al., "Contrastive Learning with Hard Negative Samples" (ICLR 2021):
    a negative the model finds similar counts more, one it already separates counts less, and the weights keep the
    negatives' total (so the loss stays on the plain loss's scale). Positives (every item sharing a group id, e.g.
    an identical caption) are never weighted: they are not negatives.
    """
    negatives = ~positives
    scores = (beta * logits.detach()).masked_fill(positives, float("-inf"))
    count = negatives.sum(dim, keepdim=True).clamp(min=1).to(logits.dtype)
    weights = scores.softmax(dim).nan_to_num(0.0) * count  # a row without negatives: softmax of all -inf is NaN
    return torch.where(negatives, weights, torch.ones_like(weights))


def clip_loss(logits, positives, hard_negative_beta=0.0):
    """Symmetric InfoNCE with soft targets spread evenly over each row's (and column's) positives.

    `logits` (N, M) scaled similarities, `positives` (N, M) bool. With one positive per row this is CLIP's loss.
    With `hard_negative_beta > 0`, each negative's term in the softmax's denominator is weighted by its hardness
    (`hardness_weights`), which adds the log of its weight to its logit.
    """
    targets = positives.to(logits.dtype)
    row_logits = col_logits = logits
    if hard_negative_beta:
        row_logits = logits + hardness_weights(logits, positives, hard_negative_beta, dim=1).log()
        col_logits = logits + hardness_weights(logits, positives, hard_negative_beta, dim=0).log()
    row_loss = -(targets / targets.sum(1, keepdim=True) * row_logits.log_softmax(dim=1)).sum(1).mean()
    col_loss = -(targets / targets.sum(0, keepdim=True) * col_logits.log_softmax(dim=0)).sum(0).mean()
    return (row_loss + col_loss) / 2


def siglip_loss(logits, positives, hard_negative_beta=0.0):
    """SigLIP's pairwise sigmoid loss: every (i, j) is a binary problem, +1 for positives, -1 otherwise; with
    `hard_negative_beta > 0` each negative pair's term is weighted by its hardness within its row."""
    signs = 2 * positives.to(logits.dtype) - 1
    terms = nn.functional.logsigmoid(signs * logits)
    if hard_negative_beta:
        terms = terms * hardness_weights(logits, positives, hard_negative_beta, dim=1)
    return -terms.sum() / logits.shape[0]


CONTRASTIVE_LOSSES = {"clip": clip_loss, "siglip": siglip_loss}
