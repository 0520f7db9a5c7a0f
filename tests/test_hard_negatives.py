"""Hard negatives (`MMConfig.hard_negative_beta`): hardness-weighted InfoNCE / sigmoid loss in the batch, with
repeated captions still positives."""

import pytest
import torch

from configuration_mm import MMConfig
from modeling_mm.modeling_mm_losses import clip_loss, siglip_loss

from test_modeling import tiny_batch, tiny_model


def _logits(requires_grad=True):
    """Row 0: item 1 is a positive (a repeated caption), item 2 a hard negative, item 3 an easy one."""
    logits = torch.tensor(
        [[2.0, 2.0, 1.5, -3.0], [2.0, 2.0, 0.0, 0.0], [1.5, 0.0, 2.0, 0.0], [-3.0, 0.0, 0.0, 2.0]]
    )
    positives = torch.eye(4, dtype=torch.bool)
    positives[0, 1] = positives[1, 0] = True
    return logits.requires_grad_(requires_grad), positives


@pytest.mark.parametrize("loss_fn", [clip_loss, siglip_loss])
def test_hard_negatives_push_the_hardest_negative_harder_and_keep_repeated_captions_positive(loss_fn):
    ratios = {}
    for beta in (0.0, 1.0):
        logits, positives = _logits()
        loss_fn(logits, positives, hard_negative_beta=beta).backward()
        # Item 1 shares item 0's caption: it is pulled closer, not weighted as a negative.
        assert logits.grad[0, 1] < 0 and logits.grad[1, 0] < 0
        assert logits.grad[0, 2] > 0 and logits.grad[0, 3] > 0  # both negatives are pushed away
        ratios[beta] = (logits.grad[0, 2] / logits.grad[0, 3]).item()
    assert ratios[1.0] > 2 * ratios[0.0]  # the hard negative's share of the push grows with beta


@pytest.mark.parametrize("loss_fn", [clip_loss, siglip_loss])
def test_hard_negative_beta_zero_is_the_plain_loss(loss_fn):
    logits, positives = _logits(requires_grad=False)
    torch.testing.assert_close(loss_fn(logits, positives, hard_negative_beta=0.0), loss_fn(logits, positives))


def test_model_with_hard_negatives_groups_identical_captions_and_saves_the_option(tmp_path):
    model = tiny_model(hard_negative_beta=0.5)
    batch = tiny_batch()
    batch["input_ids"][1] = batch["input_ids"][0]
    with_duplicate = model(**batch, return_loss=True).loss
    explicit = model(**batch, group_ids=torch.tensor([7, 7, 8, 9]), return_loss=True).loss
    as_negatives = model(**batch, group_ids=torch.arange(4), return_loss=True).loss
    torch.testing.assert_close(with_duplicate, explicit)
    assert not torch.isclose(with_duplicate, as_negatives)
    assert not torch.isclose(with_duplicate, tiny_model()(**batch, return_loss=True).loss)  # the option is live

    model.config.save_pretrained(tmp_path)
    assert MMConfig.from_pretrained(tmp_path).hard_negative_beta == 0.5
    with pytest.raises(ValueError, match="hard_negative_beta must be a number >= 0"):
        MMConfig.from_preset("tiny", hard_negative_beta=-1.0)
