"""Tests of processing_mm: image processor, audio feature extractor, tokenizer training, the combined processor, and
its save/load round trip as a consumer sees it (AutoProcessor with remote code, in a clean subprocess)."""

import doctest
import json
import re

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image
from testers import REPO_ROOT, run_clean, tiny_captions, tiny_processor, tiny_tokenizer
from transformers import AutoProcessor, AutoTokenizer, WhisperFeatureExtractor
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from transformers.utils import logging

from processing_mm import MMFeatureExtractor, MMImageProcessor, MMProcessor, train_tokenizer

MEAN = np.asarray(OPENAI_CLIP_MEAN, dtype=np.float32)[:, None, None]
STD = np.asarray(OPENAI_CLIP_STD, dtype=np.float32)[:, None, None]


def rgb_of(pixel_values):
    """Undo the normalisation: (batch, 3, H, W) -> 0..255 floats, to check colours in familiar units."""
    return (np.asarray(pixel_values) * STD + MEAN) * 255


def random_image(width=48, height=40, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def tone(seconds=0.5, frequency=440.0, amplitude=0.5, rate=16000):
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


@pytest.fixture(scope="module")
def processor():
    return tiny_processor()


@pytest.fixture(scope="module")
def image_processor():
    return MMImageProcessor(size=32)


@pytest.fixture(scope="module")
def feature_extractor():
    return MMFeatureExtractor(feature_size=32, max_length=128)


# ----------------------------------------------------------------------------------------------------------- images


def test_image_output_shape_and_crop_size(image_processor):
    images = [random_image(48, 40), random_image(20, 90, seed=1), random_image(32, 32, seed=2)]
    pixel_values = image_processor(images, return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == (3, 3, 32, 32) and pixel_values.dtype == torch.float32
    rectangular = MMImageProcessor(size=32, crop_size={"height": 24, "width": 16})
    assert rectangular(images[0], return_tensors="np")["pixel_values"].shape == (1, 3, 24, 16)


def test_pil_numpy_and_torch_inputs_agree(image_processor):
    image = random_image()
    hwc = np.array(image)
    expected = image_processor(image)["pixel_values"]
    for same in (hwc, hwc.transpose(2, 0, 1), hwc.astype(np.float32) / 255, torch.from_numpy(hwc).permute(2, 0, 1),
                 torch.from_numpy(hwc).permute(2, 0, 1).float() / 255, hwc.astype(np.int64)):
        np.testing.assert_array_equal(image_processor(same)["pixel_values"], expected)


def test_image_batch_equals_single(image_processor):
    images = [random_image(48, 40), random_image(90, 20, seed=1), random_image(33, 64, seed=2)]
    batch = image_processor(images)["pixel_values"]
    for index, image in enumerate(images):
        np.testing.assert_array_equal(batch[index], image_processor(image)["pixel_values"][0])
    stacked = np.stack([np.asarray(random_image(seed=s)) for s in range(2)])  # a 4-D array is a batch
    assert image_processor(stacked)["pixel_values"].shape == (2, 3, 32, 32)


def test_resize_center_crop_matches_clip_pipeline(image_processor):
    # A left half black / right half white image: after a shortest-edge resize and a centre crop, the boundary must
    # stay in the middle column, which a wrong resize box or crop offset would move.
    array = np.zeros((40, 80, 3), dtype=np.uint8)
    array[:, 40:] = 255
    rgb = rgb_of(image_processor(Image.fromarray(array))["pixel_values"])[0]
    assert np.allclose(rgb[:, :, :15], 0, atol=1) and np.allclose(rgb[:, :, 17:], 255, atol=1)


def test_transparent_pixels_become_white(image_processor):
    clear = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    half_red = Image.new("RGBA", (16, 16), (255, 0, 0, 128))
    grey_alpha = Image.new("LA", (16, 16), (0, 0))
    palette = Image.new("P", (16, 16), 1)
    palette.putpalette([0, 255, 0, 0, 0, 0])
    palette.info["transparency"] = 1  # palette index 1 (black) is transparent
    rgba_array = np.zeros((16, 16, 4), dtype=np.uint8)  # transparent black as a numpy array
    premultiplied_grey_alpha = Image.new("LA", (16, 16), (0, 0)).convert("La")  # PIL has no La -> RGBA
    rgb = rgb_of(image_processor([clear, grey_alpha, palette, rgba_array, premultiplied_grey_alpha])["pixel_values"])
    np.testing.assert_allclose(rgb, 255, atol=0.5)
    half_grey = Image.new("LA", (16, 16), (100, 128))
    np.testing.assert_allclose(  # half-transparent grey 100 on white, premultiplied or not
        rgb_of(image_processor([half_grey, half_grey.convert("La")])["pixel_values"])[:, :, 0, 0], 177, atol=1.5
    )
    half = rgb_of(image_processor(half_red)["pixel_values"])[0, :, 0, 0]
    np.testing.assert_allclose(half, [255, 127, 127], atol=1.5)


def test_colour_modes_convert_to_correct_rgb(image_processor):
    cases = {
        "CMYK cyan": (Image.new("CMYK", (8, 8), (255, 0, 0, 0)), [0, 255, 255]),
        "palette": (Image.new("P", (8, 8), 1), [10, 20, 30]),
        "L": (Image.new("L", (8, 8), 77), [77, 77, 77]),
        "1": (Image.new("1", (8, 8), 1), [255, 255, 255]),
        "I (8-bit values)": (Image.new("I", (8, 8), 200), [200, 200, 200]),
        "F in [0, 1]": (Image.new("F", (8, 8), 0.5), [128, 128, 128]),
    }
    cases["palette"][0].putpalette([0, 0, 0, 10, 20, 30])
    for name, (image, colour) in cases.items():
        rgb = rgb_of(image_processor(image)["pixel_values"])[0, :, 0, 0]
        np.testing.assert_allclose(rgb, colour, atol=1.0, err_msg=name)


def test_16_bit_images_are_scaled_not_clipped(image_processor):
    values = np.array([[0, 1000], [32896, 65535]], dtype=np.uint16)
    grey16 = Image.fromarray(np.kron(values, np.ones((8, 8), dtype=np.uint16)))  # mode "I;16", 16x16
    assert grey16.mode == "I;16"
    plain = MMImageProcessor(size=16, do_normalize=False, do_rescale=False)  # output stays in 0..255
    pixels = plain(grey16)["pixel_values"][0, 0]
    np.testing.assert_allclose(pixels[[0, 0, 15, 15], [0, 15, 0, 15]], [0, 4, 128, 255], atol=1)
    wide = plain([Image.new("I", (16, 16), 65535), np.full((16, 16), 1000, dtype=np.int64)])["pixel_values"]
    np.testing.assert_allclose(wide[:, 0, 0, 0], [255, 4], atol=1)  # values above 255 mark 16-bit data
    rgb16 = np.full((8, 8, 3), 65535, dtype=np.uint16)
    rgb16[..., 1] = 32896
    np.testing.assert_allclose(plain(rgb16)["pixel_values"][0, :, 0, 0], [255, 128, 255], atol=1)


def test_image_paths_and_unreadable_files(image_processor, tmp_path):
    good = tmp_path / "good.png"
    random_image().save(good)
    np.testing.assert_array_equal(
        image_processor([str(good)])["pixel_values"], image_processor(random_image())["pixel_values"]
    )
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"definitely not a jpeg")
    with pytest.raises(ValueError, match=r"Image 1 \(.*corrupt\.jpg'\) could not be read"):
        image_processor([good, corrupt])
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ValueError, match=r"Image 0 \(.*truncated\.png'\) could not be read"):
        image_processor(str(truncated))
    with pytest.raises(ValueError, match=r"Image 2 \(.*missing\.png'\) could not be read: FileNotFoundError"):
        image_processor([good, good, tmp_path / "missing.png"])


def test_bad_image_arrays_name_the_input(image_processor):
    with pytest.raises(ValueError, match=r"Image 1 has shape \(5, 6, 7\)"):
        image_processor([np.zeros((8, 8, 3), np.uint8), np.zeros((5, 6, 7), np.uint8)])
    with pytest.raises(ValueError, match="Image 0 contains NaN"):
        image_processor(np.full((8, 8, 3), np.nan, np.float32))
    with pytest.raises(ValueError, match=r"Image 1 is 0x0 \(width x height\): it has no pixels"):
        image_processor([Image.new("RGB", (8, 8)), Image.new("RGB", (0, 0))])
    with pytest.raises(ValueError, match="Image 0 is a int; expected a PIL image"):
        image_processor(12)  # not an image at all
    with pytest.raises(ValueError, match="crop_size .* is larger than size"):
        MMImageProcessor(size=32, crop_size=48)
    with pytest.raises(ValueError, match="smaller than crop_size"):
        MMImageProcessor(size=32, do_resize=False)(np.zeros((16, 16, 3), np.uint8))


def test_config_saved_with_the_removed_augmentation_options_loads_with_the_same_pixels(image_processor, tmp_path):
    """Earlier versions saved a blind random crop/flip (`do_augment`, off) in preprocessor_config.json; such a folder
    still loads, preprocesses as before, and saves without those keys (augmentation is training_mm.augmentation)."""
    image_processor.save_pretrained(tmp_path)
    path = tmp_path / "preprocessor_config.json"
    saved = json.loads(path.read_text())
    legacy = {"do_augment": False, "augment_scale": [0.5, 1.0], "augment_ratio": [0.75, 1.3333], "augment_flip_prob": 0.5}
    path.write_text(json.dumps({**saved, **legacy}))
    loaded = MMImageProcessor.from_pretrained(tmp_path)
    image = random_image(64, 48)
    np.testing.assert_array_equal(loaded(image)["pixel_values"], image_processor(image)["pixel_values"])
    assert not set(legacy) & set(loaded.to_dict())


@pytest.mark.parametrize("size, width, height", [(32, 64, 64), (32, 640, 480), (224, 64, 64), (224, 640, 480)])
def test_rgb_pixels_match_transformers_clip_image_processor(size, width, height):
    """MMImageProcessor is CLIP preprocessing (shortest edge, center crop, CLIP mean/std): on RGB images it gives
    CLIPImageProcessorPil's pixels, up to one 8-bit level where mm resizes only the cropped region in one pass
    (docs/design.md says why mm does not build on that class)."""
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    image = random_image(width, height)
    clip = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    ours = MMImageProcessor(size=size)(image)["pixel_values"]
    theirs = clip(image, return_tensors="np")["pixel_values"]
    one_level = 1 / 255 / min(OPENAI_CLIP_STD)
    assert ours.shape == theirs.shape == (1, 3, size, size)
    assert np.abs(ours - theirs).max() <= one_level + 1e-5
    assert np.abs(ours - theirs).mean() < 1e-3


# ------------------------------------------------------------------------------------------------------------ audio


def test_audio_shapes_and_mask(feature_extractor):
    clips = [tone(0.5), tone(0.25, 880), np.zeros(1234, np.float32)]
    out = feature_extractor(clips, sampling_rate=16000, return_tensors="pt")
    assert out["input_features"].shape == (3, 32, 50) and out["input_features"].dtype == torch.float32
    assert out["audio_attention_mask"].sum(-1).tolist() == [50, 25, 7]
    assert (out["input_features"][1, :, 25:] == 0).all()  # padded frames hold padding_value


def test_single_clip_with_pipeline_call_style(feature_extractor):
    # What the zero-shot-audio-classification pipeline does: no padding arguments at all.
    out = feature_extractor([tone()], sampling_rate=feature_extractor.sampling_rate, return_tensors="pt")
    assert out["input_features"].shape == (1, 32, 50) and out["audio_attention_mask"].all()
    assert torch.equal(feature_extractor(tone(), sampling_rate=16000, return_tensors="pt")["input_features"],
                       out["input_features"])


def test_audio_batch_equals_single(feature_extractor):
    # Exactly equal, not just close: a clip's features must not depend on what else is in the batch.
    clips = [tone(0.5), tone(0.31, 880, 0.1), tone(0.01, 200), tone(2.0, 300)]  # the last one is truncated
    batch = feature_extractor(clips, sampling_rate=16000)["input_features"]
    for index, clip in enumerate(clips):
        single = feature_extractor(clip, sampling_rate=16000)["input_features"][0]
        np.testing.assert_array_equal(batch[index, :, : single.shape[-1]], single)
        assert (batch[index, :, single.shape[-1] :] == feature_extractor.padding_value).all()


def test_log_mel_runs_on_one_thread_and_leaves_torch_threads_as_they_were(feature_extractor, monkeypatch):
    # One clip's ops are too small for several intra-op threads (on a busy machine each waits on the others); the
    # extractor runs them on one and must hand the caller's setting back, also when the log-mel itself fails.
    seen = []
    batch_log_mel = MMFeatureExtractor._batch_log_mel

    def counting(self, signal, num_frames):
        seen.append(torch.get_num_threads())
        if len(seen) == 3:
            raise RuntimeError("log-mel failed")
        return batch_log_mel(self, signal, num_frames)

    monkeypatch.setattr(MMFeatureExtractor, "_batch_log_mel", counting)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        feature_extractor([tone(0.5), tone(0.25, 880)], sampling_rate=16000)
        assert seen == [1, 1] and torch.get_num_threads() == 2
        with pytest.raises(RuntimeError, match="log-mel failed"):
            feature_extractor([tone(0.5)], sampling_rate=16000)
        assert seen == [1, 1, 1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


def test_features_match_whisper():
    # Same recipe as Whisper's extractor, so its 80-bin features are reproduced (Whisper pads to 30 s, so compare
    # with padding="longest" on one clip).
    clip = tone(0.5) + np.random.default_rng(0).normal(0, 0.01, 8000).astype(np.float32)
    ours = MMFeatureExtractor(feature_size=80)(clip, sampling_rate=16000)["input_features"]
    whisper = WhisperFeatureExtractor(feature_size=80)(clip, sampling_rate=16000, padding="longest")["input_features"]
    assert ours.shape == whisper.shape == (1, 80, 50)
    np.testing.assert_allclose(ours, whisper, atol=1e-5)
    assert -1.5 <= ours.min() and ours.max() <= 1.5  # roughly [-1, 1]


def test_padding_max_length_and_truncation(feature_extractor):
    padded = feature_extractor(tone(0.5), sampling_rate=16000, padding="max_length")
    assert padded["input_features"].shape == (1, 32, 128) and padded["audio_attention_mask"].sum() == 50
    long_clip = tone(2.0)  # 200 frames > max_length 128
    cut = feature_extractor(long_clip, sampling_rate=16000)
    assert cut["input_features"].shape == (1, 32, 128) and cut["audio_attention_mask"].all()
    with pytest.raises(ValueError, match=r"Audio 1 has 200 frames \(2.00 s\), more than max_length=128"):
        feature_extractor([tone(0.5), long_clip], sampling_rate=16000, truncation=False)
    unpadded = feature_extractor([tone(0.5), tone(0.2)], sampling_rate=16000, padding=False)
    assert [f.shape for f in unpadded["input_features"]] == [(32, 50), (32, 20)]


def test_stereo_is_downmixed_either_layout(feature_extractor):
    left, right = tone(0.5, 440), tone(0.5, 660, 0.2)
    mono = feature_extractor((left + right) / 2, sampling_rate=16000)["input_features"]
    for stereo in (np.stack([left, right]), np.stack([left, right], axis=1), torch.from_numpy(np.stack([left, right]))):
        np.testing.assert_allclose(feature_extractor(stereo, sampling_rate=16000)["input_features"], mono, atol=1e-6)
    with pytest.raises(ValueError, match=r"Audio 0 is a 2-D array of shape \(16, 8000\).*Pass a batch as a list"):
        feature_extractor(np.zeros((16, 8000), np.float32), sampling_rate=16000)


def test_integer_pcm_is_scaled(feature_extractor):
    def features(samples):
        return feature_extractor(samples, sampling_rate=16000)["input_features"]

    clip = tone(0.5, amplitude=0.5)
    int16 = np.round(clip * 32767).astype(np.int16)
    uint8 = (np.round(clip * 127) + 128).astype(np.uint8)  # 8-bit WAV: unsigned, silence at 128
    # Each PCM format must give exactly the features of the float waveform it encodes.
    np.testing.assert_allclose(features(int16), features(int16 / np.float32(32768)), atol=1e-6)
    np.testing.assert_allclose(features(int16.astype(np.int32) << 16), features(int16), atol=1e-6)
    np.testing.assert_allclose(features(uint8), features((uint8 - np.float32(128)) / 128), atol=1e-6)
    np.testing.assert_allclose(features(int16), features(clip), atol=1e-3)  # full scale is 1.0, not 32767
    np.testing.assert_allclose(features(clip.astype(np.float64)), features(clip), atol=1e-6)
    np.testing.assert_allclose(features(clip.tolist()), features(clip), atol=1e-6)
    with pytest.raises(ValueError, match="Audio 0 has integer dtype int64"):
        features(np.zeros(100, np.int64))


def test_wrong_or_missing_sampling_rate(feature_extractor, caplog):
    with pytest.raises(ValueError) as error:
        feature_extractor(tone(), sampling_rate=44100)
    message = str(error.value)
    assert "44100 Hz" in message and "16000 Hz" in message
    assert "Audio(sampling_rate=16000)" in message and "librosa.resample" in message

    logger = logging.get_logger(MMFeatureExtractor.__module__)
    logger.warning_once.cache_clear()  # warning_once remembers messages process-wide
    with caplog.at_level("WARNING", logger=logger.name):
        feature_extractor(tone())
        feature_extractor(tone())
    assert caplog.text.count("pass the `sampling_rate` argument") == 1  # warned, and only once


def test_empty_and_silent_audio_are_finite(feature_extractor):
    out = feature_extractor([np.zeros(0, np.float32), np.zeros(8000, np.float32), []], sampling_rate=16000)
    assert np.isfinite(out["input_features"]).all()
    assert out["input_features"].shape == (3, 32, 50)
    assert out["audio_attention_mask"].sum(-1).tolist() == [1, 50, 1]
    short = feature_extractor(np.full(100, 0.1, np.float32), sampling_rate=16000)  # shorter than one window
    assert short["input_features"].shape == (1, 32, 1) and np.isfinite(short["input_features"]).all()


def test_non_finite_audio_names_the_input(feature_extractor):
    bad = tone()
    bad[10] = np.nan
    with pytest.raises(ValueError, match="Audio 2 contains NaN or infinite"):
        feature_extractor([tone(), tone(), bad], sampling_rate=16000)
    with pytest.raises(ValueError, match="Audio 0 contains NaN or infinite"):
        feature_extractor(np.full(800, np.inf, np.float32), sampling_rate=16000)


def test_audio_file_paths(feature_extractor, tmp_path):
    clip = tone(0.5)
    path = tmp_path / "clip.wav"
    soundfile.write(path, np.stack([clip, clip], axis=1), 16000, subtype="PCM_16")  # stereo int16 on disk
    from_file = feature_extractor(str(path))["input_features"]
    np.testing.assert_allclose(from_file, feature_extractor(clip, sampling_rate=16000)["input_features"], atol=1e-3)
    slow = tmp_path / "slow.wav"
    soundfile.write(slow, clip, 8000)
    with pytest.raises(ValueError, match=r"Audio 1 \(.*slow\.wav'\) is sampled at 8000 Hz but .* expects 16000 Hz"):
        feature_extractor([str(path), str(slow)])
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF nonsense")
    with pytest.raises(ValueError, match=r"Audio 0 \(.*broken\.wav'\) could not be read"):
        feature_extractor(str(broken))


def test_feature_extractor_saves_small_json_and_reloads(feature_extractor, tmp_path):
    feature_extractor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert "mel_filters" not in saved and "window" not in saved
    assert saved["feature_size"] == 32 and saved["max_length"] == 128
    reloaded = MMFeatureExtractor.from_pretrained(tmp_path)
    clip = tone(0.3)
    np.testing.assert_array_equal(
        reloaded(clip, sampling_rate=16000)["input_features"], feature_extractor(clip, sampling_rate=16000)["input_features"]
    )


# -------------------------------------------------------------------------------------------------------- tokenizer


def test_tokenizer_special_ids_match_text_config_defaults():
    tokenizer = tiny_tokenizer()
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2, 3)
    assert len(tokenizer) <= 400 and tokenizer.padding_side == "right" and tokenizer.model_max_length == 32
    batch = tokenizer(["a red star", "a photo of a purple triangle"], padding=True)
    first = batch["input_ids"][0]
    assert first[0] == 1 and 2 in first and first[-1] == 0 and batch["attention_mask"][0][-1] == 0
    assert tokenizer.batch_decode(batch["input_ids"], skip_special_tokens=True) == ["a red star", "a photo of a purple triangle"]
    # Byte-level: text the corpus never had still round-trips, without <unk>.
    ids = tokenizer("Zebra ünïcode 🎵")["input_ids"]
    assert 3 not in ids and tokenizer.decode(ids, skip_special_tokens=True) == "Zebra ünïcode 🎵"


def test_train_tokenizer_accepts_iterables_and_rejects_empty_corpus(tmp_path):
    tokenizer = train_tokenizer((caption for caption in tiny_captions()), vocab_size=300, model_max_length=16)
    assert len(tokenizer) <= 300
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded("a blue ring")["input_ids"] == tokenizer("a blue ring")["input_ids"]
    assert reloaded.model_max_length == 16 and reloaded.pad_token_id == 0
    with pytest.raises(ValueError, match="empty corpus"):
        train_tokenizer([], vocab_size=300)
    with pytest.raises(ValueError, match="empty corpus"):
        train_tokenizer(["", "   "], vocab_size=300)
    with pytest.raises(TypeError, match="single str"):
        train_tokenizer("a caption", vocab_size=300)


# -------------------------------------------------------------------------------------------------------- processor


def test_processor_returns_contract_keys_for_any_subset(processor):
    text = ["a red circle", "the sound of a blue star"]
    images = [random_image(), random_image(seed=1)]
    audio = [tone(0.5), tone(0.2)]
    everything = processor(text=text, images=images, audio=audio, sampling_rate=16000, return_tensors="pt")
    assert set(everything) == {"input_ids", "attention_mask", "pixel_values", "input_features", "audio_attention_mask"}
    assert everything["input_ids"].dtype == torch.long and everything["input_ids"].shape[0] == 2
    assert everything["pixel_values"].shape == (2, 3, 32, 32)
    assert everything["input_features"].shape == (2, 32, 50)
    assert set(processor(text=text, return_tensors="pt")) == {"input_ids", "attention_mask"}
    assert set(processor(images=images, return_tensors="pt")) == {"pixel_values"}
    assert set(processor(audio=audio, sampling_rate=16000)) == {"input_features", "audio_attention_mask"}
    assert set(processor.model_input_names) == set(everything)
    with pytest.raises(ValueError, match="at least one of `text`, `images` or `audio`"):
        processor()


def test_processor_forwards_modality_kwargs(processor):
    out = processor(audio=tone(0.5), sampling_rate=16000, audio_kwargs={"padding": "max_length"})
    assert out["input_features"].shape[-1] == 128
    image = random_image(64, 64)
    assert processor(images=image, images_kwargs={"size": 16, "crop_size": 16})["pixel_values"].shape[-1] == 16
    no_special = processor(text="a red star", add_special_tokens=False)["input_ids"]
    assert 1 not in no_special[0] and 2 not in no_special[0]


def test_processor_rejects_empty_text(processor):
    with pytest.raises(ValueError, match=r"Text 1 is empty \('   '\)"):
        processor(text=["a red star", "   "])
    with pytest.raises(ValueError, match=r"Text 0 is empty \(''\)"):
        processor(text="")


def test_processor_truncates_long_text_or_explains(processor):
    long_text = " ".join(tiny_captions()[:20])
    out = processor(text=["a red star", long_text], return_tensors="pt")
    assert out["input_ids"].shape[1] == 32 and out["input_ids"][1, -1] == processor.tokenizer.eos_token_id
    length = len(processor.tokenizer(long_text)["input_ids"])
    with pytest.raises(ValueError, match=rf"Text 1 is {length} tokens long, more than the limit of 32"):
        processor(text=["a red star", long_text], truncation=False)
    with pytest.raises(ValueError, match=r"Text 0 is \d+ tokens long, more than the limit of 5 \(max_length\)"):
        processor(text="a photo of a red star", truncation=False, max_length=5)


def test_processor_decoding(processor):
    ids = processor(text=["a green cross", "a white ring"], return_tensors="pt")["input_ids"]
    assert processor.batch_decode(ids, skip_special_tokens=True) == ["a green cross", "a white ring"]
    assert processor.decode(ids[0], skip_special_tokens=True) == "a green cross"
    assert processor.post_process_image_text_to_text(ids) == ["a green cross", "a white ring"]


def _round_trip_inputs():
    return dict(
        text=["a photo of a red star", "a blue ring"],
        images=[random_image(50, 40), random_image(31, 77, seed=3)],
        audio=[tone(0.5), tone(0.3, 880)],
        sampling_rate=16000,
    )


def test_save_and_load_with_auto_processor(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert saved["auto_map"]["AutoProcessor"] == "processing_mm.MMProcessor"
    assert saved["image_processor"]["auto_map"]["AutoImageProcessor"] == "image_processing_mm.MMImageProcessor"
    assert saved["feature_extractor"]["auto_map"]["AutoFeatureExtractor"] == "feature_extraction_mm.MMFeatureExtractor"
    assert "mel_filters" not in saved["feature_extractor"]
    for name in ("processing_mm.py", "image_processing_mm.py", "feature_extraction_mm.py", "tokenizer.json"):
        assert (tmp_path / name).is_file(), name
    assert not (tmp_path / "tokenization_mm.py").exists()  # the tokenizer is a stock one, no remote code

    loaded = AutoProcessor.from_pretrained(tmp_path, trust_remote_code=True)
    assert type(loaded).__name__ == "MMProcessor" and type(loaded) is not MMProcessor  # came from the saved files
    expected = processor(**_round_trip_inputs(), return_tensors="pt")
    actual = loaded(**_round_trip_inputs(), return_tensors="pt")
    assert set(actual) == set(expected)
    for key in expected:
        assert torch.equal(actual[key], expected[key]), key


def test_round_trip_in_clean_subprocess(processor, tmp_path):
    checkpoint = tmp_path / "checkpoint"
    processor.save_pretrained(checkpoint)
    inputs = _round_trip_inputs()
    np.savez(tmp_path / "inputs.npz", *[np.asarray(image) for image in inputs["images"]])
    np.savez(tmp_path / "audio.npz", *inputs["audio"])
    code = f"""
import json, numpy as np
from transformers import AutoProcessor
processor = AutoProcessor.from_pretrained({str(checkpoint)!r}, trust_remote_code=True)
images = list(np.load("inputs.npz").values())
audio = list(np.load("audio.npz").values())
out = processor(text={inputs["text"]!r}, images=images, audio=audio, sampling_rate=16000, return_tensors="np")
np.savez("outputs.npz", **{{key: np.asarray(value) for key, value in out.items()}})
print(json.dumps({{"class": type(processor).__module__ + "." + type(processor).__name__,
                  "image_processor": type(processor.image_processor).__name__,
                  "feature_extractor": type(processor.feature_extractor).__name__}}))
"""
    report = json.loads(run_clean(code, cwd=tmp_path).strip().splitlines()[-1])
    assert report["class"].startswith("transformers_modules.") and report["class"].endswith("MMProcessor")
    assert (report["image_processor"], report["feature_extractor"]) == ("MMImageProcessor", "MMFeatureExtractor")
    expected = processor(**inputs, return_tensors="np")
    actual = dict(np.load(tmp_path / "outputs.npz"))
    assert set(actual) == set(expected)
    for key in expected:
        np.testing.assert_array_equal(actual[key], expected[key], err_msg=key)


@pytest.mark.parametrize("public", [MMFeatureExtractor, MMImageProcessor, MMProcessor, train_tokenizer])
def test_docstring_examples_run(public):
    # The examples are what users copy first; run them so they cannot drift from the code.
    source = re.sub(r"^\s*```.*$", "", public.__doc__, flags=re.M)  # Markdown fences are not doctest output
    test = doctest.DocTestParser().get_doctest(source, {}, public.__name__, None, 0)
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    runner.run(test)
    assert runner.summarize(verbose=False).failed == 0


def test_run_clean_hides_this_repository(tmp_path):
    out = run_clean("import sys; print(any(p.rstrip('/') == %r for p in sys.path))" % str(REPO_ROOT), cwd=tmp_path)
    assert out.strip() == "False"
    with pytest.raises(RuntimeError, match="ModuleNotFoundError: No module named 'processing_mm'"):
        run_clean("import processing_mm", cwd=REPO_ROOT)  # not even from the repository's own directory
