"""A captioned image dataset on the (local) Hub, read by name: `--dataset_name org/name`.

The dataset is pushed with `datasets`' own `DatasetDict.push_to_hub` (parquet shards through LFS, a README with the
`configs` YAML) to the local Hub of `hub_server.py`, then read back through `training_mm.data.load_user_dataset`,
in memory and streamed, and trained on by examples/run_clip.py. Every read is checked to have reached the local Hub,
so a passing test cannot come from a stale cache.
"""

from pathlib import Path

import datasets
import numpy as np
import pytest
from datasets import Dataset, DatasetDict, Features, Image, IterableDatasetDict, Value
from huggingface_hub import ModelCard
from PIL import Image as PILImage

from testers import TINY_RUN, tiny_captions
from training_mm.data import load_user_dataset

import run_clip

REPO_ID = "mm-org/scenes"
SIZES = {"train": 8, "validation": 4}


def _split(num_rows, seed):
    """`num_rows` random 32 px RGB images (each one different) with distinct captions."""
    rng = np.random.default_rng(seed)
    images = [PILImage.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(num_rows)]
    captions = tiny_captions()[seed * 10 : seed * 10 + num_rows]
    features = Features({"image": Image(), "caption": Value("string")})
    return Dataset.from_dict({"image": images, "caption": captions}, features=features)


@pytest.fixture
def scenes(hub_server):
    """The dataset pushed to `mm-org/scenes` on the local Hub; the Hub's request log starts empty after the push."""
    pushed = DatasetDict({name: _split(size, seed) for seed, (name, size) in enumerate(SIZES.items())})
    pushed.push_to_hub(REPO_ID)
    files = hub_server.files(REPO_ID, repo_type="dataset")
    assert {"README.md", "data/train-00000-of-00001.parquet", "data/validation-00000-of-00001.parquet"} <= set(files)
    assert hub_server.unhandled == []
    hub_server.requests.clear()
    return pushed


def _assert_rows_equal(rows, pushed_split):
    assert [row["caption"] for row in rows] == pushed_split["caption"]
    for row, expected in zip(rows, pushed_split["image"]):
        assert isinstance(row["image"], PILImage.Image)
        np.testing.assert_array_equal(np.asarray(row["image"]), np.asarray(expected))


def _assert_read_from_hub(hub_server):
    downloads = [path for method, path in hub_server.requests if method == "GET" and path.endswith(".parquet")]
    assert any(path.startswith(f"/datasets/{REPO_ID}/resolve/") for path in downloads), hub_server.requests
    assert hub_server.unhandled == []


def _arrow_files():
    return list(Path(datasets.config.HF_DATASETS_CACHE).rglob("*.arrow"))


def test_hub_dataset_loads_by_name_with_its_splits_images_and_captions(scenes, hub_server, tmp_path):
    splits = load_user_dataset(REPO_ID)
    assert isinstance(splits, DatasetDict)
    assert set(splits) == set(SIZES)  # the Hub's validation split is kept, not carved out of train
    for name, pushed in scenes.items():
        assert sorted(splits[name].column_names) == ["caption", "image"]
        _assert_rows_equal(list(splits[name]), pushed)
    _assert_read_from_hub(hub_server)
    # Prepared into Arrow files in this test's folder, never the user's ~/.cache.
    assert _arrow_files() and all(tmp_path in path.parents for path in _arrow_files())


def test_hub_dataset_streams_rows(scenes, hub_server):
    splits = load_user_dataset(REPO_ID, streaming=True)
    assert isinstance(splits, IterableDatasetDict)
    assert set(splits) == set(SIZES)
    for name, pushed in scenes.items():
        _assert_rows_equal(list(splits[name]), pushed)
    _assert_read_from_hub(hub_server)
    assert _arrow_files() == []  # streamed from the Hub's parquet files, not downloaded and prepared first


def test_unknown_hub_dataset_is_a_clear_error(scenes, hub_server):
    with pytest.raises(ValueError, match=r"'mm-org/no-such-scenes' is not a local file or folder, and loading it from"):
        load_user_dataset("mm-org/no-such-scenes")
    # The local Hub was asked, and answered "not found": the error is not a network failure.
    assert any("mm-org/no-such-scenes" in path for _, path in hub_server.requests)
    assert hub_server.unhandled == []


def test_run_clip_trains_on_a_hub_dataset(scenes, hub_server, tmp_path):
    output_dir = tmp_path / "out"
    tiny = ["--preset", "tiny", *TINY_RUN, "--per_device_train_batch_size", "4"]  # 2 batches of the 8 train rows
    tiny += ["--min_retrieval_gallery", "4"]  # the 4 validation rows: measured here to test the path, not the model
    metrics = run_clip.main([*tiny, "--dataset_name", REPO_ID, "--output_dir", str(output_dir)])
    assert np.isfinite(metrics["train_loss"])
    assert "recall@1 image->text" in metrics and "recall@1 audio->text" not in metrics
    assert ModelCard.load(output_dir / "README.md").data.datasets == [REPO_ID]
    _assert_read_from_hub(hub_server)


def test_a_streamed_hub_dataset_without_validation_split_is_split_by_its_size(hub_server):
    """A stream has no length, so its validation split is sized from a count of its rows (5%, at least one), not a
    fixed 1000 that would leave a small stream nothing to train on; one row cannot be split, and says so."""
    DatasetDict(train=_split(8, seed=0)).push_to_hub("mm-org/train-only")
    splits = load_user_dataset("mm-org/train-only", streaming=True)
    assert [len(list(splits[name])) for name in ("train", "validation")] == [7, 1]
    DatasetDict(train=_split(1, seed=0)).push_to_hub("mm-org/one-row")
    with pytest.raises(ValueError, match="streamed train split has 1 row.*too small to split"):
        load_user_dataset("mm-org/one-row", streaming=True)
