"""The processor of a script's model: loaded from an mm checkpoint without running its code, or built for a new
model from its tower configs (with a tokenizer trained on the captions when none is given)."""

import logging

from datasets import IterableDataset
from transformers import AutoTokenizer

from configuration_mm import MMConfig
from processing_mm import MMFeatureExtractor, MMImageProcessor, MMProcessor, train_tokenizer

logger = logging.getLogger(__name__)

# Captions read to train a tokenizer when the training data is streamed (a stream has no length to read to the end).
TOKENIZER_STREAM_SAMPLES = 100_000


def load_processor(path, config=None, tokenizer_name=None):
    """An mm checkpoint's processor, built from this package's classes, so none of the checkpoint's code runs.

    The saved folder names its classes as remote code (`auto_map`, for consumers without the package), so
    `MMProcessor.from_pretrained` and `AutoTokenizer` without a config would ask to run the checkpoint's files, or
    those of any repo its `auto_map` names. Here the image processor and feature extractor are this package's classes,
    and the tokenizer is a transformers class resolved from `config` (default: `MMConfig.from_pretrained(path)`) with
    `trust_remote_code=False`; `tokenizer_name` replaces the checkpoint's tokenizer."""
    if tokenizer_name is None and config is None:
        config = MMConfig.from_pretrained(path)
    return MMProcessor(
        image_processor=MMImageProcessor.from_pretrained(path),
        feature_extractor=MMFeatureExtractor.from_pretrained(path),
        tokenizer=AutoTokenizer.from_pretrained(tokenizer_name or path, config=config, trust_remote_code=False),
    )


def new_processor(towers, train_split, tokenizer_source=None, image_kwargs=None):
    """A processor for a new model with the tower configs `towers` ({"text", "vision", "audio"}): images at the
    vision tower's size (normalised with `image_kwargs`, default CLIP's mean/std), log-mel features the audio tower
    takes, and the tokenizer at `tokenizer_source` or, without one, a tokenizer trained on `train_split`'s captions
    with the text tower's vocabulary size; texts are cut to the text tower's positions."""
    max_text_length = getattr(towers["text"], "max_position_embeddings", 512)
    if tokenizer_source:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_source, trust_remote_code=False)
        # Longer texts would index past the text tower's position table.
        tokenizer.model_max_length = min(tokenizer.model_max_length, max_text_length)
    else:
        captions = (
            (row["caption"] for row in train_split.select_columns(["caption"]).take(TOKENIZER_STREAM_SAMPLES))
            if isinstance(train_split, IterableDataset)
            else train_split["caption"]
        )
        # Deterministic for the same captions, so every process of a distributed run trains the same tokenizer.
        tokenizer = train_tokenizer(captions, vocab_size=towers["text"].vocab_size, model_max_length=max_text_length)
        logger.info("Trained a tokenizer on the training captions: %d tokens", len(tokenizer))
    image_size = image_size_of(towers["vision"])
    audio = towers["audio"]
    return MMProcessor(
        image_processor=MMImageProcessor(size=image_size, crop_size=image_size, **(image_kwargs or {})),
        feature_extractor=MMFeatureExtractor(
            feature_size=getattr(audio, "num_mel_bins", 80),
            max_length=2 * getattr(audio, "max_source_positions", 500),
        ),
        tokenizer=tokenizer,
    )


def image_size_of(vision_config):
    """The square image side a vision tower's config expects (224 for one that does not say)."""
    size = getattr(vision_config, "image_size", 224)
    return size if isinstance(size, int) else max(size)
