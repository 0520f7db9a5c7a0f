"""MMModel and its towers: shapes, losses, gradients, attention back-ends, checkpointing, errors."""

import copy

import pytest
import torch
from torch.nn.functional import normalize
from transformers.modeling_outputs import BaseModelOutputWithPooling

from configuration_mm import MMConfig
from modeling_mm import MMAudioModel, MMModel, MMTextModel, MMVisionModel
from modeling_mm.modeling_mm_losses import clip_loss, siglip_loss, text_group_ids


def tiny_model(**overrides):
    torch.manual_seed(0)
    return MMModel(MMConfig.from_preset("tiny", **overrides)).eval()


def tiny_batch(batch_size=4, seed=0):
    """Text, image and audio for `batch_size` items, with padding in the text and audio of some items."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(4, 512, (batch_size, 10), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[-1, 6:] = 0
    audio_attention_mask = torch.ones(batch_size, 50, dtype=torch.long)
    audio_attention_mask[-1, 30:] = 0
    return dict(
        input_ids=input_ids,
        attention_mask=attention_mask,
        pixel_values=torch.randn(batch_size, 3, 32, 32, generator=generator),
        input_features=torch.randn(batch_size, 32, 50, generator=generator),
        audio_attention_mask=audio_attention_mask,
    )


def test_forward_scores_every_present_pair():
    model, batch = tiny_model(), tiny_batch()
    out = model(**batch)
    assert out.logits_per_image.shape == out.logits_per_audio.shape == out.logits_per_audio_image.shape == (4, 4)
    torch.testing.assert_close(out.logits_per_text, out.logits_per_image.t())
    for embeds in (out.text_embeds, out.image_embeds, out.audio_embeds):
        torch.testing.assert_close(embeds.norm(dim=-1), torch.ones(4))

    text_audio = model(**{k: batch[k] for k in ("input_ids", "attention_mask", "input_features", "audio_attention_mask")})
    assert text_audio.logits_per_image is None and text_audio.logits_per_audio.shape == (4, 4)
    torch.testing.assert_close(text_audio.logits_per_audio, out.logits_per_audio)


def test_get_features_match_forward_embeddings():
    """As CLIPModel's in transformers 5: a BaseModelOutputWithPooling whose pooler_output is the projected, not yet
    normalised embedding; forward's embeddings are those, L2-normalised."""
    model, batch = tiny_model(), tiny_batch()
    out = model(**batch)
    features = {
        "text": model.get_text_features(batch["input_ids"], batch["attention_mask"]),
        "image": model.get_image_features(batch["pixel_values"]),
        "audio": model.get_audio_features(batch["input_features"], batch["audio_attention_mask"]),
    }
    for name, feature in features.items():
        assert isinstance(feature, BaseModelOutputWithPooling)
        assert feature.pooler_output.shape == (4, model.config.projection_dim)
        assert not torch.allclose(feature.pooler_output.norm(dim=-1), torch.ones(4))
        torch.testing.assert_close(normalize(feature.pooler_output, dim=-1), getattr(out, f"{name}_embeds"))
    torch.testing.assert_close(features["image"].last_hidden_state, out.vision_model_output.last_hidden_state)


def test_padding_does_not_change_embeddings():
    """An item's embedding must not depend on how much padding its batch added."""
    model, batch = tiny_model(), tiny_batch()
    alone_text = model.get_text_features(batch["input_ids"][-1:, :6]).pooler_output
    padded_text = model.get_text_features(batch["input_ids"], batch["attention_mask"]).pooler_output[-1:]
    torch.testing.assert_close(padded_text, alone_text)
    alone_audio = model.get_audio_features(batch["input_features"][-1:, :, :30]).pooler_output
    padded = model.get_audio_features(batch["input_features"], batch["audio_attention_mask"]).pooler_output[-1:]
    torch.testing.assert_close(padded, alone_audio, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("loss_type", ["clip", "siglip"])
def test_return_loss_reaches_every_trainable_parameter(loss_type):
    model = tiny_model(loss_type=loss_type).train()
    out = model(**tiny_batch(), return_loss=True)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    missing = [name for name, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert missing == []


def test_loss_needs_two_modalities():
    model, batch = tiny_model(), tiny_batch()
    with pytest.raises(ValueError, match="at least two"):
        model(input_ids=batch["input_ids"], return_loss=True)


def test_clip_loss_with_unique_pairs_is_clips_loss():
    logits = torch.randn(5, 5)
    reference = (
        torch.nn.functional.cross_entropy(logits, torch.arange(5))
        + torch.nn.functional.cross_entropy(logits.t(), torch.arange(5))
    ) / 2
    torch.testing.assert_close(clip_loss(logits, torch.eye(5, dtype=torch.bool)), reference)


def test_siglip_loss_with_unique_pairs_is_siglips_loss():
    logits = torch.randn(5, 5)
    labels = 2 * torch.eye(5) - 1
    reference = -torch.nn.functional.logsigmoid(labels * logits).sum() / 5
    torch.testing.assert_close(siglip_loss(logits, torch.eye(5, dtype=torch.bool)), reference)


@pytest.mark.parametrize("loss_fn", [clip_loss, siglip_loss])
def test_repeated_captions_are_pulled_together_not_pushed_apart(loss_fn):
    """Items 0 and 1 share a caption: the loss must raise (never lower) their cross similarity."""
    logits = torch.zeros(4, 4, requires_grad=True)
    positives = torch.eye(4, dtype=torch.bool)
    positives[0, 1] = positives[1, 0] = True
    loss_fn(logits, positives).backward()
    assert logits.grad[0, 1] < 0 and logits.grad[1, 0] < 0  # gradient descent increases these logits
    assert logits.grad[0, 2] > 0  # a real negative is still pushed down


def test_identical_texts_or_labels_become_positives():
    model = tiny_model()
    batch = tiny_batch()
    batch["input_ids"][1] = batch["input_ids"][0]
    powers = model.text_hash_powers
    ids = text_group_ids(batch["input_ids"], batch["attention_mask"], powers)
    assert ids[0] == ids[1] and len(set(ids.tolist())) == 3
    # The same text padded to another length has the same id.
    padded = torch.cat([batch["input_ids"][:1], torch.zeros(1, 5, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(1, 10), torch.zeros(1, 5)], dim=1).long()
    assert text_group_ids(padded, mask, powers) == ids[0]

    # Treating the duplicate as a positive gives a different loss than treating it as a negative.
    with_dup = model(**batch, return_loss=True).loss
    as_negatives = model(**batch, group_ids=torch.arange(4), return_loss=True).loss
    explicit = model(**batch, group_ids=torch.tensor([7, 7, 8, 9]), return_loss=True).loss
    torch.testing.assert_close(with_dup, explicit)
    assert not torch.isclose(with_dup, as_negatives)


@pytest.mark.parametrize("loss_type", ["clip", "siglip"])
def test_loss_decreases_when_training_on_a_batch(loss_type):
    model = tiny_model(loss_type=loss_type).train()
    batch = tiny_batch(batch_size=8)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = model(**batch, return_loss=True).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_eager_sdpa_and_flex_agree(tmp_path):
    tiny_model().save_pretrained(tmp_path)
    batch = tiny_batch()
    outputs = {}
    for impl in ("eager", "sdpa", "flex_attention"):
        model = MMModel.from_pretrained(tmp_path, attn_implementation=impl)
        assert model.text_model.config._attn_implementation == impl
        with torch.no_grad():  # flex attention has no CPU backward in torch 2.13; forward is what is compared
            outputs[impl] = model(**batch)
    for impl in ("sdpa", "flex_attention"):
        for key in ("text_embeds", "image_embeds", "audio_embeds"):
            torch.testing.assert_close(outputs[impl][key], outputs["eager"][key], atol=1e-5, rtol=1e-4)


def test_gradient_checkpointing_gives_the_same_gradients():
    model = tiny_model().train()
    checkpointed = copy.deepcopy(model)
    checkpointed.gradient_checkpointing_enable()
    assert checkpointed.text_model.encoder.layers[0].gradient_checkpointing
    batch = tiny_batch()
    for m in (model, checkpointed):
        m(**batch, return_loss=True).loss.backward()
    for (name, p), (_, q) in zip(model.named_parameters(), checkpointed.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-5, msg=name)


def test_hidden_states_and_attentions_on_request():
    model = MMModel(MMConfig.from_preset("tiny", attn_implementation="eager")).eval()
    out = model(**tiny_batch(), output_hidden_states=True, output_attentions=True)
    text = out.text_model_output
    assert len(text.hidden_states) == model.config.text_config.num_hidden_layers + 1
    assert text.attentions[0].shape == (4, 4, 10, 10)  # (B, heads, L, L)
    assert out.vision_model_output.attentions[0].shape == (4, 4, 16, 16)
    assert tiny_model()(**tiny_batch()).text_model_output.hidden_states is None


def test_bad_inputs_raise_clear_errors():
    config = MMConfig.from_preset("tiny")
    with pytest.raises(ValueError, match=r"33 tokens .* max_position_embeddings \(32\).*truncation"):
        MMTextModel(config.text_config)(input_ids=torch.ones(1, 33, dtype=torch.long))
    with pytest.raises(ValueError, match=r"32x32 pixels, got \(64, 64\)"):
        MMVisionModel(config.vision_config)(pixel_values=torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match=r"at most 128 frames"):
        MMAudioModel(config.audio_config)(input_features=torch.randn(1, 32, 200))


def test_towers_from_existing_checkpoints_keep_their_weights(tmp_path):
    """--text_encoder / --vision_encoder: any AutoModel checkpoint becomes a tower (VisionTextDualEncoder style)."""
    from transformers import BertConfig, BertModel, ViTConfig, ViTModel

    tower = dict(num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    BertModel(BertConfig(vocab_size=100, hidden_size=32, **tower)).save_pretrained(tmp_path / "bert")
    ViTModel(ViTConfig(image_size=32, patch_size=8, hidden_size=48, **tower)).save_pretrained(tmp_path / "vit")

    model = MMModel.from_encoders(
        text_encoder=str(tmp_path / "bert"), vision_encoder=str(tmp_path / "vit"), config=MMConfig.from_preset("tiny")
    )
    bert = BertModel.from_pretrained(tmp_path / "bert")
    torch.testing.assert_close(model.text_model.embeddings.word_embeddings.weight, bert.embeddings.word_embeddings.weight)
    assert model.visual_projection.in_features == 48

    batch = dict(input_ids=torch.randint(0, 100, (3, 7)), pixel_values=torch.randn(3, 3, 32, 32))
    out = model(**batch, return_loss=True)
    out.loss.backward()
    assert model.text_model.embeddings.word_embeddings.weight.grad is not None

    model.save_pretrained(tmp_path / "mm")
    reloaded = MMModel.from_pretrained(tmp_path / "mm").eval()
    assert type(reloaded.text_model).__name__ == "BertModel"
    torch.testing.assert_close(reloaded(**batch).logits_per_image, model.eval()(**batch).logits_per_image)


def test_loaded_model_finds_the_same_positives(tmp_path):
    """Buffers that are not saved (the text hash weights) are rebuilt on load, so positives survive a reload."""
    model = tiny_model()
    model.save_pretrained(tmp_path)
    reloaded = MMModel.from_pretrained(tmp_path)
    torch.testing.assert_close(reloaded.text_hash_powers, model.text_hash_powers)
    batch = tiny_batch()
    batch["input_ids"][1] = batch["input_ids"][0]
    torch.testing.assert_close(reloaded(**batch, return_loss=True).loss, model(**batch, return_loss=True).loss)


def test_a_whisper_style_audio_tower_sees_silence_where_a_clip_is_padded():
    """Qwen2-Audio's encoder takes no padding mask and exactly 2 x max_source_positions frames: MMModel pads to that
    length and fills every padded frame with what Whisper's extractor makes of silence (the clip's peak minus 2),
    not with zeros the pretrained encoder never saw."""
    from transformers import AutoConfig

    audio_config = AutoConfig.for_model(
        "qwen2_audio_encoder", num_mel_bins=16, max_source_positions=30, d_model=32, encoder_layers=1,
        encoder_attention_heads=4, encoder_ffn_dim=64,
    )  # fmt: skip
    model = MMModel(MMConfig(**{**MMConfig.from_preset("tiny").to_dict(), "audio_config": audio_config})).eval()
    seen = []
    model.audio_model.register_forward_hook(lambda module, args, kwargs, out: seen.append(kwargs), with_kwargs=True)
    features = torch.randn(2, 16, 50)
    mask = torch.ones(2, 50, dtype=torch.long)
    mask[1, 20:] = 0
    with torch.no_grad():
        model.get_audio_features(features, audio_attention_mask=mask)
    (tower_input,) = [kwargs["input_features"] for kwargs in seen]
    assert tower_input.shape == (2, 16, 60)
    torch.testing.assert_close(tower_input[0, :, :50], features[0])
    torch.testing.assert_close(tower_input[1, :, :20], features[1, :, :20])
    for row, length in ((0, 50), (1, 20)):
        silence = features[row, :, :length].max() - 2.0
        assert torch.all(tower_input[row, :, length:] == silence)
