"""Preprocessing of mm: image processor, audio feature extractor, tokenizer training and the combined processor."""

from .feature_extraction_mm import MMFeatureExtractor
from .image_processing_mm import MMImageProcessor
from .processing_mm import MMProcessor
from .tokenization_mm import train_tokenizer

__all__ = ["MMFeatureExtractor", "MMImageProcessor", "MMProcessor", "train_tokenizer"]
