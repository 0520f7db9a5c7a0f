"""The forward passes compile as one graph: no graph breaks under torch.compile.

`torch._dynamo.explain` traces the forward the way `torch.compile(fullgraph=True)` would, without running
inductor, so the test stays fast on CPU. A graph break would cost speed on every step (a return to Python, a
split graph, no CUDA graph), and `fullgraph=True` users would get an error instead.
"""

import pytest
import torch
from transformers import EncoderDecoderCache, StaticCache

from configuration_mm import MMConfig
from modeling_mm import MMForConditionalGeneration, MMModel

from test_modeling import tiny_batch


def assert_one_graph(fn, *args, **kwargs):
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(fn)(*args, **kwargs)
    reasons = [str(reason) for reason in explanation.break_reasons]
    assert explanation.graph_break_count == 0, f"{explanation.graph_break_count} graph break(s): {reasons}"
    assert explanation.graph_count == 1


@pytest.mark.parametrize(("attn_implementation", "loss_type"), [("sdpa", "clip"), ("eager", "siglip")])
def test_mm_model_training_forward_has_no_graph_breaks(attn_implementation, loss_type):
    """Text, image and audio with padding in the text and the audio, and the contrastive loss."""
    torch.manual_seed(0)
    config = MMConfig.from_preset("tiny", loss_type=loss_type, attn_implementation=attn_implementation)
    model = MMModel(config).train()
    assert_one_graph(lambda **batch: model(**batch, return_loss=True), **tiny_batch())


def test_mm_model_image_text_inference_has_no_graph_breaks():
    """The CLIP-style inference path: image + text, no loss, no padding (the mask-free branch)."""
    torch.manual_seed(0)
    model = MMModel(MMConfig.from_preset("tiny")).eval()
    batch = tiny_batch()
    with torch.no_grad():
        assert_one_graph(model, input_ids=batch["input_ids"], pixel_values=batch["pixel_values"])


def tiny_captioner(attn_implementation="sdpa"):
    torch.manual_seed(0)
    config = MMConfig.from_preset("tiny", attn_implementation=attn_implementation)
    return MMForConditionalGeneration(config)


def caption_batch():
    """Captions with padding in the last row, their labels, and the media of `tiny_batch`."""
    batch = tiny_batch()
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    return dict(batch, labels=labels)


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_captioning_training_forward_has_no_graph_breaks(attn_implementation):
    model = tiny_captioner(attn_implementation).train()
    batch = caption_batch()
    for key in ("input_features", "audio_attention_mask"):
        batch.pop(key)
    assert_one_graph(model, **batch)


def test_captioning_forward_with_padded_audio_has_no_graph_breaks():
    model = tiny_captioner().train()
    assert_one_graph(model, **caption_batch())


def test_static_cache_decoding_step_has_no_graph_breaks():
    """The step `generate(cache_implementation="static")` compiles: one new token per row against the cache generate
    builds, static self-attention keys/values plus the cross-attention keys/values projected once per call."""
    model = tiny_captioner().eval()
    batch = tiny_batch()
    with torch.no_grad():
        encoder_hidden_states, _ = model.get_encoder_hidden_states(pixel_values=batch["pixel_values"])
        config = model.config.get_text_config()
        cache = EncoderDecoderCache(
            StaticCache(config=config, max_cache_len=16),
            StaticCache(config=config, max_cache_len=encoder_hidden_states.shape[1]),
        )
        bos = torch.ones(4, 1, dtype=torch.long)
        model(input_ids=bos, encoder_hidden_states=encoder_hidden_states, cache=cache, use_cache=True)
        step = dict(
            input_ids=bos,
            attention_mask=torch.ones(4, 16, dtype=torch.long),
            position_ids=torch.ones(4, 1, dtype=torch.long),
            cache_position=torch.tensor([1]),
            encoder_hidden_states=encoder_hidden_states,
            cache=cache,
            use_cache=True,
        )
        assert_one_graph(model, **step)
