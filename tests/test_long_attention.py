"""Attention for long inputs: local, block-sparse and linear attention, chosen per tower in the config.

Each variant is checked against a dense reference of the same pattern, against full attention where it must be
exact, on padded batches, under torch.compile (no graph breaks), in a short training run, and as saved remote code.
"""

import json

import pytest
import torch
from safetensors.torch import save_file

from configuration_mm import MMConfig, MMDecoderConfig
from modeling_mm import MMAudioModel, MMModel
from modeling_mm.modeling_mm_layers import MMAttention, eager_attention_forward
from modeling_mm.modeling_mm_long_attention import LONG_INPUT_ATTENTION_FUNCTIONS, block_offsets
from test_compile import assert_one_graph
from test_modeling import tiny_batch
from testers import run_clean

# One setting per variant, small enough that the tiny audio tower's 25 positions span many windows and blocks.
VARIANTS = {
    "local": dict(attention_type="local", attention_window=3, num_global_tokens=2),
    "block_sparse": dict(attention_type="block_sparse", attention_block_size=2, num_global_tokens=1),
    "linear": dict(attention_type="linear"),
}
# Every tower on a different variant: what a long-input checkpoint looks like.
MIXED = dict(
    text_config=VARIANTS["linear"], vision_config=VARIANTS["block_sparse"], audio_config=VARIANTS["local"]
)


def audio_tower(**attention):
    torch.manual_seed(0)
    return MMAudioModel(MMConfig.from_preset("tiny", audio_config=attention).audio_config).eval()


def padded_audio():
    """Two clips of 50 and 30 frames, padded to 50 (25 and 15 positions after the stem)."""
    torch.manual_seed(1)
    features = torch.randn(2, 32, 50)
    mask = torch.ones(2, 50, dtype=torch.long)
    mask[1, 30:] = 0
    return features, mask


def dense_pattern(config, length):
    """(length, length) bool: which keys each query may see, written out position by position."""
    num_global = config.num_global_tokens
    allowed = torch.zeros(length, length, dtype=torch.bool)
    allowed[:num_global, :] = allowed[:, :num_global] = True
    num_blocks = -(-(length - num_global) // config.attention_block_size)
    strides = {abs(int(offset)) for offset in block_offsets(num_blocks)}
    for i in range(num_global, length):
        for j in range(num_global, length):
            if config.attention_type == "local":
                allowed[i, j] = abs(i - j) <= config.attention_window
            else:
                allowed[i, j] = abs((i - num_global) // config.attention_block_size - (j - num_global)
                                    // config.attention_block_size) in strides  # fmt: skip
    return allowed


@pytest.mark.parametrize("variant", ["local", "block_sparse"])
def test_sparse_variants_equal_softmax_attention_under_their_dense_pattern(variant):
    config = MMConfig.from_preset("tiny", audio_config=dict(VARIANTS[variant])).audio_config
    module = MMAttention(config).eval()
    torch.manual_seed(0)
    length = 2 + 23  # the global tokens, then 23 positions: the last block is partial
    query, key, value = (torch.randn(2, 4, length, 8) for _ in range(3))
    padding = torch.ones(2, length, dtype=torch.bool)
    padding[1, 17:] = False
    output, _ = LONG_INPUT_ATTENTION_FUNCTIONS[variant](module, query, key, value, padding, scaling=8**-0.5)

    allowed = dense_pattern(config, length)[None, None] & padding[:, None, None, :]
    additive = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
    expected, _ = eager_attention_forward(module, query, key, value, additive, scaling=8**-0.5)
    torch.testing.assert_close(output[0], expected[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(output[1, :17], expected[1, :17], atol=1e-5, rtol=0)  # real queries of item 2


def test_linear_attention_equals_its_quadratic_form():
    config = MMConfig.from_preset("tiny", audio_config=VARIANTS["linear"]).audio_config
    module = MMAttention(config)
    torch.manual_seed(0)
    query, key, value = (torch.randn(2, 4, 20, 8) for _ in range(3))
    padding = torch.ones(2, 20, dtype=torch.bool)
    padding[1, 12:] = False
    output, _ = LONG_INPUT_ATTENTION_FUNCTIONS["linear"](module, query, key, value, padding, scaling=8**-0.5)
    phi_q, phi_k = torch.nn.functional.elu(query) + 1, torch.nn.functional.elu(key) + 1
    weights = (phi_q @ phi_k.transpose(-1, -2)) * padding[:, None, None, :]  # (B, heads, T, T)
    expected = (weights / weights.sum(-1, keepdim=True)) @ value
    torch.testing.assert_close(output, expected.transpose(1, 2), atol=1e-5, rtol=1e-5)


def test_local_attention_with_a_window_covering_the_input_equals_full_attention():
    full = audio_tower()
    local = audio_tower(attention_type="local", attention_window=25)  # the 50 frames are 25 positions
    features, mask = padded_audio()
    with torch.no_grad():
        expected, output = full(features, mask), local(features, mask)
    torch.testing.assert_close(output.last_hidden_state, expected.last_hidden_state, atol=1e-5, rtol=0)
    torch.testing.assert_close(output.pooler_output, expected.pooler_output, atol=1e-5, rtol=0)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_padded_batch_equals_each_item_alone(variant):
    model = audio_tower(**VARIANTS[variant])
    features, mask = padded_audio()
    with torch.no_grad():
        batch = model(features, mask)
        alone = model(features[1:, :, :30])
    assert batch.last_hidden_state.shape == (2, 25, 32)  # the global tokens are not in the output
    torch.testing.assert_close(batch.last_hidden_state[1, :15], alone.last_hidden_state[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(batch.pooler_output[1], alone.pooler_output[0], atol=1e-5, rtol=0)


def test_global_tokens_are_left_out_of_the_pooling_and_learn():
    model = audio_tower(**VARIANTS["local"]).train()
    features, mask = padded_audio()
    output = model(features, mask)
    real = mask[:, ::2, None].float()
    pooled = (output.last_hidden_state * real).sum(1) / real.sum(1)
    torch.testing.assert_close(output.pooler_output, pooled, atol=1e-6, rtol=0)
    output.pooler_output.sum().backward()
    assert model.global_tokens.shape == (1, 2, 32) and model.global_tokens.grad.abs().sum() > 0


def test_config_validates_and_saves_the_attention_fields(tmp_path):
    with pytest.raises(ValueError, match=r"attention_type must be one of \['full', 'local', 'block_sparse', 'linear'\], got 'sparse'"):  # noqa: E501
        MMConfig.from_preset("tiny", audio_config=dict(attention_type="sparse"))
    with pytest.raises(ValueError, match=r"attention_window must be a positive integer, got 0"):
        MMConfig.from_preset("tiny", audio_config=dict(attention_type="local", attention_window=0))
    with pytest.raises(ValueError, match=r"num_global_tokens=2 needs attention_type 'local' or 'block_sparse'"):
        MMConfig.from_preset("tiny", vision_config=dict(attention_type="linear", num_global_tokens=2))
    with pytest.raises(ValueError, match=r"attention_dropout=0.1 cannot apply to attention_type='linear'"):
        MMConfig.from_preset("tiny", text_config=dict(attention_type="linear", attention_dropout=0.1))
    with pytest.raises(ValueError, match=r"MMDecoderConfig.attention_type must be 'full'"):
        MMDecoderConfig(attention_type="local")

    MMConfig.from_preset("tiny", **MIXED).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["audio_config"]["attention_type"] == "local" and saved["audio_config"]["num_global_tokens"] == 2
    assert saved["vision_config"]["attention_type"] == "block_sparse"
    assert saved["text_config"]["attention_type"] == "linear"
    assert saved["decoder_config"]["attention_type"] == "full"
    reloaded = MMConfig.from_pretrained(tmp_path)
    assert reloaded.audio_config.attention_window == 3 and reloaded.vision_config.attention_block_size == 2


def test_every_variant_in_its_own_tower_trains_without_graph_breaks():
    torch.manual_seed(0)
    model = MMModel(MMConfig.from_preset("tiny", **MIXED)).train()
    assert_one_graph(lambda **batch: model(**batch, return_loss=True), **tiny_batch())


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_audio_tower_with_each_variant_learns(variant):
    """Ten AdamW steps of the contrastive loss on one batch (audio and text towers on the variant)."""
    torch.manual_seed(0)
    model = MMModel(MMConfig.from_preset("tiny", audio_config=VARIANTS[variant], text_config=VARIANTS[variant]))
    batch = tiny_batch()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(10):
        loss = model(**batch, return_loss=True).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_saved_model_with_every_variant_loads_without_the_package(tmp_path):
    torch.manual_seed(0)
    model = MMModel(MMConfig.from_preset("tiny", **MIXED)).eval()
    model.save_pretrained(tmp_path)
    batch = tiny_batch()
    with torch.no_grad():
        expected = model(**batch)
    tensors = {**batch, **{key: expected[key] for key in ("text_embeds", "image_embeds", "audio_embeds")}}
    save_file({key: value.contiguous() for key, value in tensors.items()}, tmp_path / "inputs_and_outputs.safetensors")
    code = f"""
import torch
from safetensors.torch import load_file
from transformers import AutoModel
folder = {str(tmp_path)!r}
model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
assert "transformers_modules" in type(model).__module__
types = [getattr(model.config, name).attention_type for name in ("text_config", "vision_config", "audio_config")]
assert types == ["linear", "block_sparse", "local"], types
tensors = load_file(folder + "/inputs_and_outputs.safetensors")
expected = {{key: tensors.pop(key) for key in ("text_embeds", "image_embeds", "audio_embeds")}}
with torch.no_grad():
    out = model(**tensors)
for key, value in expected.items():
    torch.testing.assert_close(out[key], value, atol=1e-5, rtol=0)
print("LONG ATTENTION LOADS")
"""
    assert "LONG ATTENTION LOADS" in run_clean(code, cwd=tmp_path)


def test_long_audio_preset_takes_thirty_seconds_with_local_attention():
    """The `small-long-audio` preset's audio tower: a 30 s clip, featurized by the processor a new model gets, runs
    through it untruncated (1,500 positions) with local attention; the `small` preset's 4 s would cut it."""
    from training_mm.processors import new_processor

    config = MMConfig.from_preset(
        "small-long-audio",
        audio_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4),
    )
    assert config.audio_config.attention_type == "local"
    towers = {"text": config.text_config, "vision": config.vision_config, "audio": config.audio_config}
    processor = new_processor(towers, {"caption": ["a red circle", "a blue square"]}, tokenizer_source=None)
    features = processor.feature_extractor(
        [0.1 * torch.randn(30 * 16000).numpy()], sampling_rate=16000, return_tensors="pt"
    )
    assert features["input_features"].shape[-1] == 3000
    torch.manual_seed(0)
    tower = MMAudioModel(config.audio_config).eval()
    with torch.no_grad():
        out = tower(features["input_features"], audio_attention_mask=features["audio_attention_mask"])
    assert out.last_hidden_state.shape[1] == 1500 and torch.isfinite(out.last_hidden_state).all()
    small = MMConfig.from_preset("small").audio_config
    assert 2 * small.max_source_positions < 3000
