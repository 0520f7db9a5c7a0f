"""Tests for the data layer: built-in synthetic data (training_mm.synthetic_data) and user data (training_mm.data)."""

import json
import logging

import datasets
import numpy as np
import pytest
import soundfile as sf
from datasets import DatasetDict, IterableDatasetDict
from PIL import Image
import torch
from testers import require_espeak, tiny_processor, write_folder

from training_mm import synthetic_data
from training_mm import data_workers
from training_mm.audio_decoding import resample, resample_column
from training_mm.data_workers import ROWS_PER_STREAM_SHARD
from training_mm.data import SAMPLING_RATE, decode_audio, filter_unreadable, load_user_dataset
from training_mm.media_inputs import media_inputs, open_image
from training_mm.synthetic_data import COLOURS, HELD_OUT, build_synthetic_dataset


TINY = dict(num_train=12, num_validation=4, num_test=6, image_size=32, seed=0)


@pytest.fixture(autouse=True)
def private_hf_cache(tmp_path, monkeypatch):
    """Keep the Arrow files `load_dataset` writes out of the user's ~/.cache."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


@pytest.fixture(scope="module")
def builtin(tmp_path_factory):
    require_espeak()
    return build_synthetic_dataset(**TINY, cache_dir=tmp_path_factory.mktemp("builtin"))


def _pairs(label):
    """The (colour, shape) pairs a label names, e.g. 'two red stars' -> [('red', 'star')]."""
    words = label.split()
    return [(word, words[i + 1].rstrip("s")) for i, word in enumerate(words[:-1]) if word in COLOURS]


# ------------------------------------------------------------------------------------------- synthetic data


def test_same_seed_gives_identical_data_and_second_build_is_a_cache_hit(builtin, tmp_path, monkeypatch):
    again = build_synthetic_dataset(**TINY, cache_dir=tmp_path)
    for split in ("train", "validation", "test"):
        assert again[split]["caption"] == builtin[split]["caption"]
        images = again[split].cast_column("image", datasets.Image(decode=False))["image"]
        assert images == builtin[split].cast_column("image", datasets.Image(decode=False))["image"]
        assert again[split]["audio"] == builtin[split]["audio"]

    def no_generation(*args, **kwargs):
        raise AssertionError("the cached dataset should have been loaded, not generated again")

    monkeypatch.setattr(synthetic_data, "make_example", no_generation)
    assert build_synthetic_dataset(**TINY, cache_dir=tmp_path)["test"]["caption"] == builtin["test"]["caption"]


def test_different_seed_gives_different_data(tmp_path):
    seed_0 = build_synthetic_dataset(**TINY, with_audio=False, cache_dir=tmp_path)
    seed_1 = build_synthetic_dataset(**{**TINY, "seed": 1}, with_audio=False, cache_dir=tmp_path)
    assert seed_0["train"]["caption"] != seed_1["train"]["caption"]


def test_held_out_pairs_appear_only_in_test(builtin):
    assert {split: len(rows) for split, rows in builtin.items()} == {"train": 12, "validation": 4, "test": 6}
    for split in ("train", "validation"):
        for label in builtin[split]["label"]:
            assert not set(_pairs(label)) & set(HELD_OUT), f"{split} row {label!r} uses a held-out pair"
    for label in builtin["test"]["label"]:
        assert set(_pairs(label)) & set(HELD_OUT), f"test row {label!r} has no held-out pair"


def test_caption_names_what_the_image_shows(builtin):
    for row in builtin["train"]:
        pairs = _pairs(row["label"])
        for colour, shape in pairs:
            assert colour in row["caption"] and shape in row["caption"], (row["caption"], row["label"])
        if len({colour for colour, _ in pairs}) == 1:  # one colour in the scene: it must dominate the image
            pixels = np.asarray(row["image"].convert("RGB"), dtype=float).reshape(-1, 3)
            vivid = pixels[pixels.max(axis=1) - pixels.min(axis=1) > 80]  # the shapes, not the grey background
            nearest = min(COLOURS, key=lambda name: np.abs(vivid.mean(axis=0) - COLOURS[name]).sum())
            assert nearest == pairs[0][0], (row["caption"], vivid.mean(axis=0))


def test_audio_is_16khz_mono_float_speech(builtin):
    assert builtin["train"].features["audio"] == datasets.Audio(decode=False)
    for value in builtin["train"]["audio"][:4]:
        wave, rate = decode_audio(value)
        assert rate == SAMPLING_RATE and wave.dtype == np.float32 and wave.ndim == 1
        assert 0.5 < len(wave) / rate < 4.0  # the `small` preset hears at most 4 s
        assert np.sqrt(np.mean(wave**2)) > 0.01


def test_without_espeak_images_and_captions_still_build_with_a_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(synthetic_data.shutil, "which", lambda name: None)
    with caplog.at_level(logging.WARNING):
        built = build_synthetic_dataset(**TINY, cache_dir=tmp_path)
    assert built["train"].column_names == ["image", "caption", "label"]
    assert "apt-get install espeak-ng" in caplog.text and "scripts/install.sh" in caplog.text


def test_write_folder_reads_back_with_imagefolder(builtin, tmp_path):
    write_folder(builtin["test"], tmp_path / "test")
    loaded = datasets.load_dataset("imagefolder", data_dir=str(tmp_path), split="test")
    assert loaded["caption"] == builtin["test"]["caption"]
    assert loaded["label"] == builtin["test"]["label"]
    original, reloaded = builtin["test"][0]["image"], loaded[0]["image"]
    assert np.array_equal(np.asarray(original), np.asarray(reloaded))
    if "audio" in builtin["test"].column_names:
        assert loaded[0]["audio"] == "000000.wav"  # a plain path for imagefolder; load_user_dataset resolves it
        ours = load_user_dataset(str(tmp_path))["test"]
        assert ours["caption"] == builtin["test"]["caption"]
        assert np.array_equal(decode_audio(ours[0]["audio"])[0], decode_audio(builtin["test"][0]["audio"])[0])


# ------------------------------------------------------------------------------------------- audio helpers


def test_resample_keeps_tones_below_the_new_nyquist_and_removes_those_above():
    seconds = np.arange(2 * 22050) / 22050
    low = resample(np.sin(2 * np.pi * 440 * seconds), 22050, 16000)
    assert low.shape == (32000,) and low.dtype == np.float32
    inner = slice(200, -200)  # a tone cut off mid-cycle is not band-limited at its two ends
    assert np.abs(low - np.sin(2 * np.pi * 440 * np.arange(32000) / 16000))[inner].max() < 1e-3
    high = resample(np.sin(2 * np.pi * 10_000 * seconds), 22050, 16000)
    assert np.sqrt(np.mean(high[inner] ** 2)) < 1e-3


def test_decode_audio_accepts_every_form_a_dataset_uses(tmp_path):
    stereo = np.stack([np.full(800, 0.5), np.full(800, -0.25)], axis=1).astype(np.float32)  # (frames, channels)
    sf.write(tmp_path / "a.wav", stereo, 8000)
    values = [
        str(tmp_path / "a.wav"),
        {"bytes": (tmp_path / "a.wav").read_bytes(), "path": "a.wav"},
        {"bytes": None, "path": str(tmp_path / "a.wav")},
        (stereo.T, 8000),
        {"array": stereo.T, "sampling_rate": 8000},
    ]
    for value in values:
        wave, rate = decode_audio(value)
        assert rate == 8000 and wave.shape == (800,) and np.allclose(wave, 0.125, atol=1e-3)
        wave, rate = decode_audio(value, sampling_rate=16000)
        assert rate == 16000 and wave.shape == (1600,)


# ------------------------------------------------------------------------------------------- user data


def _write_files(folder, count, corrupt=()):
    """count PNG + WAV files named 0.png/0.wav, ...; the indices in `corrupt` get garbage bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        Image.new("RGB", (8, 8), (30 * index, 0, 0)).save(folder / f"{index}.png")
        sf.write(folder / f"{index}.wav", np.full(1600, 0.1 * (index + 1), np.float32), SAMPLING_RATE)
    for index, kind in corrupt:
        (folder / f"{index}.{kind}").write_bytes(b"not a real file")


def test_load_user_dataset_reads_a_metadata_folder_with_splits(tmp_path):
    _write_files(tmp_path / "train" / "files", 10)
    _write_files(tmp_path / "test", 2)
    with open(tmp_path / "train" / "metadata.jsonl", "w") as f:
        for index in range(10):
            f.write(json.dumps({"file_name": f"files/{index}.png", "speech_file_name": f"files/{index}.wav",
                                "caption": f"picture {index}", "extra": index}) + "\n")  # fmt: skip
    (tmp_path / "test" / "metadata.csv").write_text(
        "file_name,speech_file_name,caption\n0.png,0.wav,zero\n1.png,1.wav,one\n"
    )

    splits = load_user_dataset(str(tmp_path), audio_column="speech")
    assert sorted(splits) == ["test", "train", "validation"]
    assert sorted(splits["train"].column_names) == ["audio", "caption", "image"]
    assert len(splits["train"]) + len(splits["validation"]) == 10 and len(splits["validation"]) == 1
    row = splits["train"][0]
    assert row["image"].size == (8, 8)
    index = int(row["caption"].split()[-1])
    assert np.allclose(decode_audio(row["audio"])[0], 0.1 * (index + 1), atol=1e-3)


def test_load_user_dataset_reads_csv_and_jsonl_with_relative_paths_and_custom_columns(tmp_path):
    _write_files(tmp_path / "media", 4)
    rows = [{"photo": f"media/{i}.png", "sound": f"media/{i}.wav", "text": f"caption {i}"} for i in range(4)]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (tmp_path / "pairs.csv").write_text(
        "photo,sound,text\n" + "".join(f"{row['photo']},{row['sound']},{row['text']}\n" for row in rows)
    )
    for table in ("pairs.jsonl", "pairs.csv"):
        splits = load_user_dataset(
            str(tmp_path / table), image_column="photo", caption_column="text", audio_column="sound"
        )
        assert isinstance(splits, DatasetDict) and sorted(splits) == ["train", "validation"]
        everything = datasets.concatenate_datasets([splits["train"], splits["validation"]])
        assert sorted(everything["caption"]) == [f"caption {i}" for i in range(4)]
        assert all(decode_audio(value)[1] == SAMPLING_RATE for value in everything["audio"])


def test_load_user_dataset_reads_a_save_to_disk_folder_and_streams_it(builtin, tmp_path):
    builtin.save_to_disk(str(tmp_path / "saved"))
    splits = load_user_dataset(str(tmp_path / "saved"))
    assert sorted(splits) == ["test", "train", "validation"]
    assert splits["test"]["caption"] == builtin["test"]["caption"]
    assert "label" not in splits["train"].column_names  # only the columns mm reads are kept

    streamed = load_user_dataset(str(tmp_path / "saved"), streaming=True)
    assert isinstance(streamed, IterableDatasetDict)
    row = next(iter(streamed["train"]))
    assert isinstance(row["image"], Image.Image) and row["caption"] == builtin["train"][0]["caption"]
    if "audio" in row:
        assert decode_audio(row["audio"])[1] == SAMPLING_RATE


def test_a_missing_column_names_the_columns_and_the_flag(tmp_path):
    _write_files(tmp_path, 2)
    (tmp_path / "pairs.csv").write_text("file_name,text\n0.png,zero\n1.png,one\n")
    with pytest.raises(ValueError, match=r"Column 'caption' not found.*\['image', 'text'\].*--caption_column"):
        load_user_dataset(str(tmp_path / "pairs.csv"))
    with pytest.raises(ValueError, match=r"Column 'speech' not found.*--audio_column"):
        load_user_dataset(str(tmp_path / "pairs.csv"), caption_column="text", audio_column="speech")


def test_a_folder_without_metadata_or_a_missing_path_says_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match="metadata.jsonl or metadata.csv"):
        load_user_dataset(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="does not exist"):  # not sent to the Hub as a dataset name
        load_user_dataset(str(tmp_path / "typo.csv"))


@pytest.mark.parametrize("streaming", [False, True])
def test_unreadable_rows_are_skipped_and_counted(tmp_path, caplog, streaming):
    _write_files(tmp_path / "train", 8, corrupt=[(1, "png"), (4, "wav")])
    _write_files(tmp_path / "validation", 1)
    captions = ["fine"] * 8
    captions[6] = "  "
    for split, split_captions in (("train", captions), ("validation", ["held out"])):
        (tmp_path / split / "metadata.jsonl").write_text("".join(
            json.dumps({"file_name": f"{i}.png", "audio": f"{i}.wav", "caption": caption}) + "\n"
            for i, caption in enumerate(split_captions)
        ))  # fmt: skip
    train = load_user_dataset(str(tmp_path), streaming=streaming)["train"]
    with caplog.at_level(logging.WARNING):
        kept = list(filter_unreadable(train))  # a stream is checked as it is read
    assert [row["caption"] for row in kept] == ["fine"] * 5
    assert "skipped 3 of 8 rows" in caplog.text
    for reason in ("row 1: unreadable image", "row 4: unreadable audio", "row 6: empty caption"):
        assert reason in caplog.text


@pytest.mark.parametrize("streaming", [False, True])
def test_rows_with_non_finite_values_are_skipped_and_an_all_bad_split_is_an_error(tmp_path, caplog, streaming):
    """A float WAV or TIFF that decodes but holds NaN/inf is a bad row like an unreadable one, found before training
    rather than by the feature extractor mid-run; when no row is left, the error says so with the reasons."""
    _write_files(tmp_path / "train", 4)
    _write_files(tmp_path / "validation", 1)
    sf.write(tmp_path / "train" / "2.wav", np.full(1600, np.nan, np.float32), SAMPLING_RATE, subtype="FLOAT")
    Image.fromarray(np.full((8, 8), np.inf, np.float32)).save(tmp_path / "train" / "3.tif")  # PIL mode "F"

    def write(captions):
        for split, count in (("train", 4), ("validation", 1)):
            (tmp_path / split / "metadata.jsonl").write_text("".join(
                json.dumps({"image": f"{i}.{'tif' if i == 3 else 'png'}", "audio": f"{i}.wav", "caption": captions[i]})
                + "\n" for i in range(count)
            ))  # fmt: skip
        return load_user_dataset(str(tmp_path), streaming=streaming)["train"]

    train = write([f"item {i}" for i in range(4)])
    with caplog.at_level(logging.WARNING):
        kept = list(filter_unreadable(train))  # a stream is checked as it is read
    assert [row["caption"] for row in kept] == ["item 0", "item 1"]
    assert "skipped 2 of 4 rows" in caplog.text
    assert "row 2: audio" in caplog.text and "2.wav' holds NaN or infinite values" in caplog.text
    assert "row 3: image" in caplog.text and "3.tif' holds NaN or infinite values" in caplog.text

    blank = write([" "] * 4)
    with pytest.raises(ValueError, match=r"all 4 rows unreadable.*row 0: empty caption ' '"):
        list(filter_unreadable(blank))


def test_empty_tables_and_a_numeric_caption_column_name_the_file_and_the_column(tmp_path):
    _write_files(tmp_path, 2)
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "header.csv").write_text("file_name,caption\n\n")
    (tmp_path / "empty.jsonl").write_text("\n")
    empty = {"empty.csv": "is empty", "header.csv": "holds only a header line", "empty.jsonl": "is empty"}
    for name, what in empty.items():
        with pytest.raises(ValueError, match=rf"{tmp_path / name} {what}: it has no rows"):
            load_user_dataset(str(tmp_path / name))
    (tmp_path / "numbers.csv").write_text("file_name,caption,text\n0.png,7,zero\n1.png,8,one\n")
    with pytest.raises(ValueError, match=r"Column 'caption' of .*numbers.csv.* holds int64 values, not text"):
        load_user_dataset(str(tmp_path / "numbers.csv"))
    assert load_user_dataset(str(tmp_path / "numbers.csv"), caption_column="text")["train"][0]["caption"] == "one"


def test_held_out_rows_that_are_also_in_train_are_dropped_with_a_count(tmp_path, caplog):
    """A test row with a training row's caption and image (same bytes, even under another file name) measures memory:
    it is dropped from test, and the log counts it. The same image with another caption is a different row."""
    _write_files(tmp_path / "train", 4)
    _write_files(tmp_path / "test", 3)  # the same files as train's first three
    (tmp_path / "test" / "copy.png").write_bytes((tmp_path / "train" / "3.png").read_bytes())
    train = [{"file_name": f"{i}.png", "caption": f"picture {i}"} for i in range(4)]
    test = [
        {"file_name": "0.png", "caption": "picture 0"},  # a training row, its file copied into test/
        {"file_name": "1.png", "caption": "picture 1"},  # another
        {"file_name": "2.png", "caption": "another caption"},  # a training image, but described otherwise
        {"file_name": "copy.png", "caption": "picture 3"},  # a training row's image under another name
    ]
    for split, rows in (("train", train), ("test", test)):
        (tmp_path / split / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    with caplog.at_level(logging.WARNING):
        splits = load_user_dataset(str(tmp_path))
    assert splits["test"]["caption"] == ["another caption"]
    assert "test: dropped 3 of 4 rows that are also in train" in caplog.text


@pytest.mark.parametrize("rows, validation", [(40, 2), (600, 100), (2600, 130)])
def test_a_validation_split_is_carved_from_train_by_its_size(tmp_path, rows, validation):
    """5% of the rows, at least one; at least a gallery of 100 when that leaves 80% to train on."""
    _write_files(tmp_path, 1)
    table = "".join(json.dumps({"image": "0.png", "caption": f"picture {i}"}) + "\n" for i in range(rows))
    (tmp_path / "pairs.jsonl").write_text(table)
    splits = load_user_dataset(str(tmp_path / "pairs.jsonl"))
    assert (len(splits["train"]), len(splits["validation"])) == (rows - validation, validation)


# ------------------------------------------------------------------------------------------- the data path at speed


def _photo(path, size=(640, 480), seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
    Image.fromarray(pixels).resize(size, Image.BICUBIC).save(path, quality=90)


def test_a_jpeg_is_decoded_at_the_size_the_model_needs_and_gives_the_same_batch(tmp_path):
    """The collator decodes an undecoded JPEG at the smallest DCT scale that still covers the processor's size (for
    32-pixel images, a 640x480 photo is read at 80x60), and the batch is the one a full decode gives, up to
    resampling differences."""
    _photo(tmp_path / "photo.jpg")
    value = {"bytes": None, "path": str(tmp_path / "photo.jpg")}
    assert open_image(value, shortest_edge=32).size == (80, 60)
    assert open_image(value).size == (640, 480)
    processor = tiny_processor()
    full = media_inputs([{"image": Image.open(value["path"])}], "image", processor)["images"]
    reduced = media_inputs([{"image": value}], "image", processor)["images"]
    full, reduced = (processor(images=images, return_tensors="pt")["pixel_values"] for images in (full, reduced))
    assert full.shape == reduced.shape == (1, 3, 32, 32)
    assert (full - reduced).abs().mean() < 0.05  # normalised pixels span about 4


def test_the_parallel_check_catches_truncated_files_and_keeps_trailing_bytes(tmp_path, caplog):
    """The cheap check (1/8-scale JPEG decode, PNG checksums, PCM headers) finds what a full decode finds: a JPEG cut
    short, a PNG with a damaged chunk; a JPEG with bytes after its end (as some cameras write) is fine. Run in two
    processes, it reports the rows by their index in the dataset."""
    files = []
    for index in range(6):
        _photo(tmp_path / f"{index}.jpg", size=(64, 48), seed=index)
        files.append(f"{index}.jpg")
    jpeg = (tmp_path / "1.jpg").read_bytes()
    (tmp_path / "1.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (tmp_path / "3.jpg").write_bytes((tmp_path / "3.jpg").read_bytes() + b"camera trailer")
    Image.new("RGB", (16, 16), "red").save(tmp_path / "4.png")
    png = bytearray((tmp_path / "4.png").read_bytes())
    png[-20] ^= 0xFF  # inside the IDAT chunk: its checksum no longer matches
    (tmp_path / "4.png").write_bytes(bytes(png))
    files[4] = "4.png"
    rows = datasets.Dataset.from_dict(
        {"image": [str(tmp_path / name) for name in files], "caption": [f"photo {i}" for i in range(6)]}
    ).cast_column("image", datasets.Image())
    with caplog.at_level(logging.WARNING):
        kept = filter_unreadable(rows, num_proc=2)
    assert kept["caption"] == ["photo 0", "photo 2", "photo 3", "photo 5"]
    assert "skipped 2 of 6 rows" in caplog.text
    assert "row 1: unreadable image" in caplog.text and "row 4: unreadable image" in caplog.text


def test_a_file_damaged_since_the_last_check_is_checked_again_not_taken_from_the_cache(tmp_path, caplog):
    _write_files(tmp_path / "train", 3)
    (tmp_path / "train" / "metadata.jsonl").write_text(
        "".join(json.dumps({"file_name": f"{i}.png", "caption": f"picture {i}"}) + "\n" for i in range(3))
    )
    train = load_user_dataset(str(tmp_path))["train"]
    assert len(filter_unreadable(train)) == len(train)
    (tmp_path / "train" / "1.png").write_bytes(b"damaged")
    with caplog.at_level(logging.WARNING):
        assert len(filter_unreadable(train)) == len(train) - 1
    assert "1.png': cannot identify image file" in caplog.text


def test_audio_at_another_rate_is_resampled_once_ahead_of_training(tmp_path):
    tone = np.sin(2 * np.pi * 440 * np.arange(22050) / 22050).astype(np.float32)
    sf.write(tmp_path / "slow.wav", tone, 22050)
    sf.write(tmp_path / "ready.wav", tone[:16000], SAMPLING_RATE)
    table = "".join(json.dumps({"audio": name, "caption": name}) + "\n" for name in ("slow.wav", "ready.wav"))
    (tmp_path / "pairs.jsonl").write_text(table)
    train = load_user_dataset(str(tmp_path / "pairs.jsonl"))["train"]
    ready = train.cast_column("audio", datasets.Audio(decode=False))
    resampled = resample_column(ready)
    for before, after in zip(ready, resampled):
        wave, rate = decode_audio(after["audio"])
        assert rate == SAMPLING_RATE and np.allclose(wave, decode_audio(before["audio"], SAMPLING_RATE)[0], atol=1e-6)
        assert after["audio"]["path"] == before["audio"]["path"]
        if before["caption"] == "ready.wav":
            assert after["audio"] == before["audio"]  # already at the rate: left as it is


def test_a_local_stream_has_a_shard_per_dataloader_worker_and_every_row_is_read_once(tmp_path):
    _write_files(tmp_path / "files", 1)
    rows = 2 * ROWS_PER_STREAM_SHARD
    table = "".join(json.dumps({"image": "files/0.png", "caption": f"picture {i}"}) + "\n" for i in range(rows))
    (tmp_path / "pairs.jsonl").write_text(table)
    splits = load_user_dataset(str(tmp_path / "pairs.jsonl"), streaming=True)
    checked = filter_unreadable(splits["train"])
    assert splits["train"].num_shards == checked.num_shards == 2
    loader = torch.utils.data.DataLoader(checked, batch_size=None, num_workers=2, collate_fn=lambda row: row["caption"])
    captions = list(loader)
    assert sorted(captions) == sorted(row["caption"] for row in splits["train"])  # read in this process, in order
    assert len(captions) == len(set(captions)) == rows - len(list(splits["validation"]))


def test_dataloader_workers_default_to_the_spare_cores_per_gpu_and_none_on_a_cpu(monkeypatch):
    monkeypatch.setattr(data_workers, "available_cpus", lambda: 16)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for gpus, workers in ((1, 8), (2, 7), (8, 1)):
        monkeypatch.setattr(torch.cuda, "device_count", lambda gpus=gpus: gpus)
        assert data_workers.dataloader_workers() == workers
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert data_workers.dataloader_workers() == 0
