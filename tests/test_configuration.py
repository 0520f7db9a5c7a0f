"""MMConfig: presets, save/load round trip, and clear errors for impossible values."""

import pytest

from configuration_mm import MMAudioConfig, MMConfig, MMTextConfig, MMVisionConfig


def test_round_trip_keeps_every_tower_field(tmp_path):
    config = MMConfig.from_preset("tiny", loss_type="siglip", text_config={"vocab_size": 300})
    config.save_pretrained(tmp_path)
    loaded = MMConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert isinstance(loaded.audio_config, MMAudioConfig)
    assert loaded.text_config.vocab_size == 300 and loaded.text_config.hidden_size == 32
    assert loaded.auto_map["AutoModel"] == "modeling_mm.MMModel"
    assert loaded.auto_map["AutoModelForZeroShotImageClassification"] == "modeling_mm.MMModel"


@pytest.mark.parametrize("name", ["tiny", "small", "base"])
def test_presets_build(name):
    config = MMConfig.from_preset(name)
    assert config.vision_config.image_size % config.vision_config.patch_size == 0


def test_base_preset_is_vit_b16_class():
    vision = MMConfig.from_preset("base").vision_config
    assert (vision.image_size, vision.patch_size, vision.hidden_size, vision.num_hidden_layers) == (224, 16, 768, 12)
    assert MMConfig.from_preset("base").text_config.num_hidden_layers == 12


@pytest.mark.parametrize(
    "build, words",
    [
        (lambda: MMTextConfig(hidden_size=30, num_attention_heads=4), ["hidden_size", "30", "num_attention_heads"]),
        (lambda: MMVisionConfig(image_size=0), ["image_size", "0"]),
        (lambda: MMVisionConfig(image_size=30, patch_size=8), ["image_size", "30", "patch_size"]),
        (lambda: MMAudioConfig(num_hidden_layers=-1), ["num_hidden_layers", "-1"]),
        (lambda: MMTextConfig(attention_dropout=1.5), ["attention_dropout", "1.5"]),
        (lambda: MMConfig(projection_dim=0), ["projection_dim", "0"]),
        (lambda: MMConfig(loss_type="triplet"), ["loss_type", "triplet", "clip", "siglip"]),
        (lambda: MMConfig(attn_implementation="fast"), ["attn_implementation", "fast", "sdpa"]),
        (lambda: MMConfig.from_preset("huge"), ["huge", "tiny", "small", "base"]),
        (lambda: MMVisionConfig(image_size=32.0, patch_size=8), ["MMVisionConfig.image_size", "integer", "32.0"]),
        (lambda: MMConfig.from_preset("tiny", text_config={"hidden_size": 32.0}), ["hidden_size", "32.0"]),
        (lambda: MMConfig(projection_dim=64.0), ["projection_dim", "64.0"]),
        (lambda: MMAudioConfig(hidden_act="swishy"), ["MMAudioConfig.hidden_act", "swishy", "gelu"]),
    ],
)
def test_impossible_values_name_field_value_and_choices(build, words):
    with pytest.raises(ValueError) as error:
        build()
    for word in words:
        assert word in str(error.value)
