"""Shared pytest set-up: fixtures used across test files (tests/ is on sys.path under pytest's rootdir)."""

import sys

import datasets
import pytest
from hub_server import hub_server  # noqa: F401  (the local Hub fixture)
from testers import NUM_EVAL, NUM_TRAIN, REPO_ROOT, mm_cache_in, require_espeak

from training_mm.synthetic_data import build_synthetic_dataset

# The example scripts are imported as real modules: Trainer pickles their TrainingArguments subclasses by name.
sys.path.insert(0, str(REPO_ROOT / "examples"))


@pytest.fixture(scope="session")
def builtin_data(tmp_path_factory):
    """The tiny built-in data that `testers.TINY_RUN` asks for, cached in a session folder that MM_CACHE names, so
    every example run in the session finds it instead of generating it again."""
    require_espeak()
    with mm_cache_in(tmp_path_factory.mktemp("mm_cache")):
        yield build_synthetic_dataset(num_train=NUM_TRAIN, num_validation=NUM_EVAL, num_test=NUM_EVAL, image_size=32)


@pytest.fixture(autouse=True)
def private_hf_cache(tmp_path, monkeypatch):
    """Keep the Arrow files `load_dataset` writes out of the user's ~/.cache."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


@pytest.fixture(scope="session")
def trained_clip(tmp_path_factory):
    """A tiny MMModel trained in the session to rank six captions against their images and tones, saved with its
    processor, plus that collection on disk (see tests/serving_testers.py)."""
    from serving_testers import train_tiny_clip

    return train_tiny_clip(tmp_path_factory.mktemp("trained_clip"))
