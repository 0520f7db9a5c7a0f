"""MMForConditionalGeneration: the captioning loss, generation through GenerationMixin (greedy, beams, sampling,
caches, static cache + torch.compile), prompts, padding, the CoCa loss, and checkpoints shared with MMModel."""

import copy
import doctest
import logging
import re
from functools import lru_cache

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoConfig, CompileConfig, EncoderDecoderCache

from configuration_mm import MMConfig
import training_mm.caption_metrics
from modeling_mm import MMForConditionalGeneration, MMModel
from modeling_mm.modeling_mm_decoder import MMTextDecoder
from modeling_mm.modeling_mm_utils import CACHE_NAME
from testers import tiny_captions, tiny_processor

CAPTIONS = [tiny_captions()[i] for i in (0, 9, 20, 33, 47, 58)]
GREEDY = dict(do_sample=False, max_new_tokens=12)


def tone(frequency, seconds):
    return (0.3 * np.sin(2 * np.pi * frequency * np.arange(int(16000 * seconds)) / 16000)).astype(np.float32)


@lru_cache(maxsize=1)
def trained_captioner():
    """A tiny captioner that has learned six captions, each from a noise image and from a tone of its own length
    (0.3-0.5 s, so audio batches are padded); returns (model, processor, image batch, audio batch, images, audio).
    Shared with test_pipelines.py."""
    processor = tiny_processor()
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in CAPTIONS]
    audio = [tone(f, s) for f, s in zip((300, 500, 700, 900, 1100, 1300), (0.3, 0.5, 0.4, 0.35, 0.45, 0.5))]
    image_batch = processor(text=CAPTIONS, images=images, return_tensors="pt")
    audio_batch = processor(text=CAPTIONS, audio=audio, sampling_rate=16000, return_tensors="pt")
    for batch in (image_batch, audio_batch):
        batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    torch.manual_seed(0)
    model = MMForConditionalGeneration(MMConfig.from_preset("tiny", text_config={"vocab_size": len(processor.tokenizer)}))
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    losses = []
    for step in range(80):
        loss = model(**(image_batch if step % 2 == 0 else audio_batch)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    model.train_losses = losses
    return model.eval(), processor, image_batch, audio_batch, images, audio


def media(batch, rows=slice(None)):
    keys = ("pixel_values", "input_features", "audio_attention_mask")
    return {key: batch[key][rows] for key in keys if key in batch}


def test_loss_decreases_and_the_captions_are_learned():
    model, processor, image_batch, audio_batch, _, _ = trained_captioner()
    assert model.train_losses[-1] < 0.1 * model.train_losses[0]
    for batch in (image_batch, audio_batch):
        generated = model.generate(**media(batch), **GREEDY)
        assert processor.batch_decode(generated, skip_special_tokens=True) == CAPTIONS


def test_labels_give_the_shifted_next_token_loss_and_skip_minus_100():
    model, processor, image_batch, _, _, _ = trained_captioner()
    ids = image_batch["input_ids"][:2]
    labels = image_batch["labels"][:2].clone()
    labels[:, :4] = -100  # a prompt: no loss on its tokens
    out = model(
        input_ids=ids,
        attention_mask=image_batch["attention_mask"][:2],
        pixel_values=image_batch["pixel_values"][:2],
        labels=labels,
    )
    expected = torch.nn.functional.cross_entropy(out.logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten())
    torch.testing.assert_close(out.loss, expected)
    assert out.contrastive_loss is None and out.caption_loss is not None


def test_cache_gives_the_same_tokens_and_scores_as_no_cache():
    model, processor, image_batch, audio_batch, _, _ = trained_captioner()
    prompt = processor(text=["a photo of", "a green"], return_tensors="pt")
    inputs = dict(**prompt, **media(image_batch, slice(0, 2)), **media(audio_batch, slice(0, 2)))
    runs = [
        model.generate(**inputs, **GREEDY, use_cache=use_cache, return_dict_in_generate=True, output_logits=True)
        for use_cache in (True, False)
    ]
    assert torch.equal(runs[0].sequences, runs[1].sequences)
    for with_cache, without in zip(runs[0].logits, runs[1].logits):
        torch.testing.assert_close(with_cache, without, atol=1e-4, rtol=1e-4)


def test_padded_batch_generates_what_each_item_generates_alone():
    """Prompts of different lengths (padded right by the processor, moved left by generate) and audio clips of
    different lengths (padded, with a frame mask)."""
    model, processor, _, audio_batch, _, audio = trained_captioner()
    prompts = ["a photo of a", "a", "a green cross on"]
    batch = processor(text=prompts, audio=audio[:3], sampling_rate=16000, return_tensors="pt")
    assert batch["attention_mask"][1].sum() < batch["attention_mask"][0].sum()
    assert not batch["audio_attention_mask"].all()
    together = processor.batch_decode(model.generate(**batch, **GREEDY), skip_special_tokens=True)
    alone = [
        processor.batch_decode(
            model.generate(**processor(text=p, audio=a, sampling_rate=16000, return_tensors="pt"), **GREEDY),
            skip_special_tokens=True,
        )[0]
        for p, a in zip(prompts, audio[:3])
    ]
    assert together == alone
    assert together[0].startswith("a photo of a")  # the prompt is continued, not repeated


def test_whisper_style_audio_tower_gives_each_clip_of_a_padded_batch_its_own_scores():
    """With another architecture's audio tower (Qwen2-Audio's encoder, which takes exactly 2 x max_source_positions
    frames), the decoder's audio mask follows the frames that tower saw: a padded batch scores each clip as alone,
    with or without a mask, and a clip longer than the tower takes is refused."""
    audio_config = AutoConfig.for_model(
        "qwen2_audio_encoder", num_mel_bins=16, max_source_positions=60, d_model=32, encoder_layers=2,
        encoder_attention_heads=4, encoder_ffn_dim=64,
    )  # fmt: skip
    torch.manual_seed(0)
    config = MMConfig(**{**MMConfig.from_preset("tiny").to_dict(), "audio_config": audio_config})
    model = MMForConditionalGeneration(config).eval()
    lengths = [40, 70, 100]
    features, mask = torch.zeros(3, 16, 100), torch.zeros(3, 100, dtype=torch.long)
    for row, length in enumerate(lengths):
        features[row, :, :length], mask[row, :length] = torch.randn(16, length), 1
    options = dict(do_sample=False, max_new_tokens=4, output_scores=True, return_dict_in_generate=True)
    together = model.generate(input_features=features, audio_attention_mask=mask, **options)
    for row, length in enumerate(lengths):
        clip, clip_mask = features[row : row + 1, :, :length], mask[row : row + 1, :length]
        alone = model.generate(input_features=clip, audio_attention_mask=clip_mask, **options)
        for step_together, step_alone in zip(together.scores, alone.scores):
            torch.testing.assert_close(step_together[row : row + 1], step_alone, atol=1e-4, rtol=1e-4)
    # Without a mask, the frames the tower pads on (to 120) are still masked for the decoder.
    unmasked = model.generate(input_features=features[2:], **options)
    for step_unmasked, step_together in zip(unmasked.scores, together.scores):
        torch.testing.assert_close(step_unmasked, step_together[2:], atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="at most 120 log-mel frames, got 130"):
        model.generate(input_features=torch.zeros(1, 16, 130), **options)


def test_prompts_are_continued_with_the_learned_caption():
    model, processor, image_batch, _, _, _ = trained_captioner()
    prompt = processor(text=["a photo of a", "a green cross"], return_tensors="pt")
    generated = model.generate(**prompt, **media(image_batch, [0, 5]), **GREEDY)
    assert processor.batch_decode(generated, skip_special_tokens=True) == [CAPTIONS[0], CAPTIONS[5]]


def test_prompt_preparation_drops_the_closing_eos_and_pads_left():
    model = trained_captioner()[0]
    bos, eos, pad = 1, 2, 0
    ids = torch.tensor([[bos, 7, 8, eos, pad], [bos, 9, eos, pad, pad], [7, 8, 9, 10, 11]])
    mask = (ids != pad).long()
    prompt, prompt_mask = model._as_prompt(ids, mask, batch_size=3)
    # Row 3 had no <s>: it gets one, and is the longest.
    assert prompt.tolist() == [[pad, pad, pad, bos, 7, 8], [pad, pad, pad, pad, bos, 9], [bos, 7, 8, 9, 10, 11]]
    assert prompt_mask.tolist() == (prompt != pad).long().tolist()
    start, start_mask = model._as_prompt(None, None, batch_size=2)
    assert start.tolist() == [[bos], [bos]] and start_mask.tolist() == [[1], [1]]


def test_beam_search_and_sampling():
    model, processor, image_batch, _, _, _ = trained_captioner()
    inputs = media(image_batch, slice(0, 3))
    greedy = model.generate(**inputs, **GREEDY)
    one_beam = model.generate(**inputs, **GREEDY, num_beams=1)
    assert torch.equal(greedy, one_beam)
    beams = model.generate(**inputs, **GREEDY, num_beams=3, num_return_sequences=2)
    assert beams.shape[0] == 6
    assert processor.batch_decode(beams[::2], skip_special_tokens=True) == CAPTIONS[:3]  # best beam: the caption
    samples = []
    for _ in range(2):
        torch.manual_seed(7)
        samples.append(model.generate(**inputs, do_sample=True, temperature=1.5, top_k=20, max_new_tokens=12))
    assert torch.equal(samples[0], samples[1])


def test_static_cache_and_torch_compile_give_the_greedy_tokens():
    model, processor, image_batch, audio_batch, _, _ = trained_captioner()
    prompt = processor(text=["a photo of", "a"], return_tensors="pt")
    inputs = dict(**prompt, **media(image_batch, slice(0, 2)), **media(audio_batch, slice(0, 2)))
    dynamic = model.generate(**inputs, **GREEDY)
    static = model.generate(**inputs, **GREEDY, cache_implementation="static")
    assert torch.equal(dynamic, static)
    # The decoding step compiles as one graph (fullgraph=True raises on a graph break). The eager backend checks the
    # capture without paying for inductor's C++ build on CPU; GPU runs use inductor.
    compile_config = CompileConfig(fullgraph=True, backend="eager")
    compile_config._compile_all_devices = True  # generate compiles on GPUs only unless told
    torch._dynamo.reset()
    compiled = model.generate(**inputs, **GREEDY, cache_implementation="static", compile_config=compile_config)
    assert torch.equal(dynamic, compiled)


@pytest.mark.parametrize(
    "options",
    [{}, {"num_beams": 3}, {"do_sample": True}, {"cache_implementation": "static"}],
    ids=["greedy", "beams", "sampling", "static"],
)
def test_encoder_keys_and_values_are_projected_once_per_generate_call(options):
    """The cross-attention keys/values of the media are cached (an `EncoderDecoderCache`), not recomputed per token."""
    model, _, image_batch, audio_batch, _, _ = trained_captioner()
    inputs = dict(**media(image_batch, slice(0, 2)), **media(audio_batch, slice(0, 2)))
    calls = []
    attention = model.decoder.layers[-1].encoder_attn
    hooks = [
        projection.register_forward_hook(lambda module, *_: calls.append(module))
        for projection in (attention.k_proj, attention.v_proj)
    ]
    try:
        generated = model.generate(**inputs, max_new_tokens=10, min_new_tokens=10, **options)
    finally:
        for hook in hooks:
            hook.remove()
    assert generated.shape[1] == 11  # <s> and 10 new tokens: 10 decoding steps
    assert calls == [attention.k_proj, attention.v_proj]


def test_forward_returns_a_cache_that_continues_decoding():
    """Outside `generate`: a forward with `use_cache=True` returns an `EncoderDecoderCache`; fed back with one more
    token, it gives that token the logits it gets in the whole text without a cache."""
    model, _, image_batch, _, _, _ = trained_captioner()
    ids, pixel_values = image_batch["input_ids"][:2, :6], image_batch["pixel_values"][:2]
    with torch.no_grad():
        encoder_hidden_states, _ = model.get_encoder_hidden_states(pixel_values=pixel_values)
        full = model(input_ids=ids, encoder_hidden_states=encoder_hidden_states).logits
        prefix = model(input_ids=ids[:, :-1], encoder_hidden_states=encoder_hidden_states, use_cache=True)
        cache = getattr(prefix, CACHE_NAME)  # `cache` from transformers 5.24, `past_key_values` before
        assert isinstance(cache, EncoderDecoderCache)
        step = model(input_ids=ids[:, -1:], encoder_hidden_states=encoder_hidden_states, cache=cache, use_cache=True)
        # The old keyword still works (the name every transformers before 5.24 passes).
        prefix = model(input_ids=ids[:, :-1], encoder_hidden_states=encoder_hidden_states, use_cache=True)
        old_name = model(
            input_ids=ids[:, -1:],
            encoder_hidden_states=encoder_hidden_states,
            past_key_values=getattr(prefix, CACHE_NAME),
            use_cache=True,
        )
    torch.testing.assert_close(step.logits[:, -1], full[:, -1], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(old_name.logits, step.logits)


def test_coca_weight_adds_the_contrastive_loss_on_the_same_batch():
    _, _, image_batch, _, _, _ = trained_captioner()
    config = MMConfig.from_preset("tiny", text_config={"vocab_size": 400}, contrastive_loss_weight=0.5)
    torch.manual_seed(0)
    model = MMForConditionalGeneration(config)
    out = model(**image_batch)
    torch.testing.assert_close(out.loss, out.caption_loss + 0.5 * out.contrastive_loss)
    out.loss.backward()
    assert model.mm.text_model.embeddings.token_embedding.weight.grad.any()
    assert model.mm.logit_scale.grad is not None

    captioning_only = MMForConditionalGeneration(MMConfig.from_preset("tiny", text_config={"vocab_size": 400}))
    out = captioning_only(**image_batch)
    assert out.contrastive_loss is None
    out.loss.backward()
    assert captioning_only.mm.text_model.embeddings.token_embedding.weight.grad is None


def test_checkpoints_are_shared_with_mmmodel(tmp_path):
    model, processor, image_batch, _, _, _ = trained_captioner()
    model.save_pretrained(tmp_path / "captioner")
    reloaded = MMForConditionalGeneration.from_pretrained(tmp_path / "captioner").eval()
    assert reloaded.lm_head.weight is reloaded.decoder.embed_tokens.weight
    torch.testing.assert_close(reloaded(**image_batch).logits, model(**image_batch).logits)

    # The captioner's towers load as an MMModel, and an MMModel's towers load into a new captioner.
    contrastive = MMModel.from_pretrained(tmp_path / "captioner").eval()
    torch.testing.assert_close(contrastive.get_image_features(image_batch["pixel_values"]),
                               model.mm.get_image_features(image_batch["pixel_values"]))
    contrastive.save_pretrained(tmp_path / "contrastive")
    captioner = MMForConditionalGeneration.from_pretrained(tmp_path / "contrastive")
    for name, tensor in contrastive.state_dict().items():
        torch.testing.assert_close(captioner.mm.state_dict()[name], tensor, msg=name)


def test_gradient_checkpointing_gives_the_same_gradients():
    _, _, image_batch, _, _, _ = trained_captioner()
    torch.manual_seed(0)
    model = MMForConditionalGeneration(MMConfig.from_preset("tiny", text_config={"vocab_size": 400})).train()
    checkpointed = copy.deepcopy(model)
    checkpointed.gradient_checkpointing_enable()
    for m in (model, checkpointed):
        m(**image_batch).loss.backward()
    for (name, p), (_, q) in zip(model.named_parameters(), checkpointed.named_parameters()):
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-5, msg=name)


def test_generate_without_media_or_prompt_says_what_it_needs():
    model = trained_captioner()[0]
    with pytest.raises(ValueError, match="prompt.*media"):
        model.generate(max_new_tokens=3)


def test_eager_and_sdpa_attention_agree(tmp_path):
    """(flex_attention gives the same logits too, but compiling its kernels costs ~15 s on CPU: checked by hand.)"""
    model, processor, image_batch, audio_batch, _, _ = trained_captioner()
    model.save_pretrained(tmp_path)
    text = {key: audio_batch[key] for key in ("input_ids", "attention_mask")}
    inputs = dict(**text, **media(image_batch), **media(audio_batch))
    logits = {}
    for impl in ("eager", "sdpa"):
        loaded = MMForConditionalGeneration.from_pretrained(tmp_path, attn_implementation=impl).eval()
        assert loaded.decoder.config._attn_implementation == impl
        with torch.no_grad():
            logits[impl] = loaded(**inputs).logits[inputs["attention_mask"].bool()]
    torch.testing.assert_close(logits["sdpa"], logits["eager"], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "documented",
    [MMForConditionalGeneration, MMForConditionalGeneration.generate, MMTextDecoder, training_mm.caption_metrics],
    ids=lambda obj: obj.__name__,
)
def test_docstring_examples_run(documented):
    source = re.sub(r"^\s*```.*$", "", documented.__doc__, flags=re.M)  # Markdown fences are not doctest output
    test = doctest.DocTestParser().get_doctest(source, {}, documented.__name__, None, 0)
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    runner.run(test)
    assert test.examples and runner.summarize(verbose=False).failed == 0


@pytest.mark.parametrize("cache_implementation", [None, "static"])
def test_generation_logs_no_deprecation(caplog, cache_implementation):
    """transformers 5.24 renamed the cache `past_key_values` -> `cache` and warns (through its logger, which
    `-W error` does not see) when the old name reaches an output or `generate`: mm uses the running version's name."""
    from transformers.utils import logging as hf_logging

    model, _, image_batch, _, _, _ = trained_captioner()
    logging.Logger.warning_once.cache_clear()  # an earlier test may already have logged the message once
    hf_logging.enable_propagation()
    try:
        with caplog.at_level("WARNING"):
            out = model(**{k: image_batch[k] for k in ("input_ids", "attention_mask", "pixel_values")}, use_cache=True)
            model.generate(
                pixel_values=image_batch["pixel_values"][:2], cache_implementation=cache_implementation, **GREEDY
            )
    finally:
        hf_logging.disable_propagation()
    assert getattr(out, CACHE_NAME) is not None
    messages = [record.getMessage() for record in caplog.records]
    assert not [m for m in messages if "deprecated" in m.lower()], messages
