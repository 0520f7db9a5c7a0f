"""The mm processor: one call that prepares any subset of text, images and audio for the mm models.

This file is Hub remote code: `save_pretrained` copies it, and the two files it imports relatively, flat next to the
weights, so it imports only `transformers` and its sibling files.
"""

from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin

from .feature_extraction_mm import MMFeatureExtractor
from .image_processing_mm import MMImageProcessor


class MMProcessor(ProcessorMixin):
    r"""Wraps an `MMImageProcessor`, an `MMFeatureExtractor` and a tokenizer into one processor whose output keys are
    the arguments of `MMModel.forward`: `input_ids`, `attention_mask`, `pixel_values`, `input_features`,
    `audio_attention_mask`.

    Args:
        image_processor (`MMImageProcessor`): prepares `images`.
        feature_extractor (`MMFeatureExtractor`): prepares `audio`.
        tokenizer (`PreTrainedTokenizerFast`): prepares `text`, e.g. from `processing_mm.train_tokenizer`; its
            `model_max_length` is the default truncation length.

    Example:
    ```python
    >>> import numpy as np
    >>> from PIL import Image
    >>> from processing_mm import MMFeatureExtractor, MMImageProcessor, MMProcessor, train_tokenizer
    >>> processor = MMProcessor(
    ...     image_processor=MMImageProcessor(size=32),
    ...     feature_extractor=MMFeatureExtractor(feature_size=32, max_length=128),
    ...     tokenizer=train_tokenizer(["a red square", "a quiet hum"] * 8, vocab_size=300, model_max_length=32),
    ... )
    >>> batch = processor(text=["a red square", "a quiet hum"], images=[Image.new("RGB", (40, 40), "red")] * 2,
    ...                   audio=[np.zeros(8000, dtype=np.float32)] * 2, sampling_rate=16000, return_tensors="pt")
    >>> sorted(batch.keys())
    ['attention_mask', 'audio_attention_mask', 'input_features', 'input_ids', 'pixel_values']
    ```
    """

    def __init__(self, image_processor: MMImageProcessor, feature_extractor: MMFeatureExtractor, tokenizer):
        super().__init__(image_processor, feature_extractor, tokenizer)

    def __call__(
        self,
        images=None,
        text: str | list[str] | None = None,
        audio=None,
        sampling_rate: int | None = None,
        padding: bool | str = True,
        truncation: bool = True,
        max_length: int | None = None,
        return_tensors: str | None = None,
        images_kwargs: dict | None = None,
        audio_kwargs: dict | None = None,
        **text_kwargs,
    ) -> BatchFeature:
        r"""Processes any subset of text, images and audio into one `BatchFeature`.

        Args:
            images: what `MMImageProcessor` accepts (PIL images, arrays, tensors, file paths, or a list of them).
            text (`str` or `list[str]`): captions or prompts; none may be empty.
            audio: what `MMFeatureExtractor` accepts (1-D arrays, multi-channel arrays, file paths, or a list).
            sampling_rate (`int`): the rate of `audio`; must be the feature extractor's (16 kHz).
            padding (`bool` or `str`, defaults to `True`): text padding, `True` pads to the longest text.
            truncation (`bool`, defaults to `True`): truncate text to `max_length`; with `False`, a longer text
                raises a `ValueError` instead of reaching the model's position limit.
            max_length (`int`, *optional*): text length limit in tokens, defaults to `tokenizer.model_max_length`.
            return_tensors (`str`, *optional*): `"pt"` or `"np"`.
            images_kwargs (`dict`, *optional*): extra arguments for the image processor, e.g. `{"size": 64}`.
            audio_kwargs (`dict`, *optional*): extra arguments for the feature extractor, e.g.
                `{"padding": "max_length"}`.
            **text_kwargs: extra arguments for the tokenizer, e.g. `add_special_tokens=False`.
        """
        if text is None and images is None and audio is None:
            raise ValueError("MMProcessor needs at least one of `text`, `images` or `audio`; got none.")
        data = {}
        if text is not None:
            data.update(self._tokenize(text, padding, truncation, max_length, return_tensors, text_kwargs))
        elif text_kwargs:
            raise TypeError(f"MMProcessor got tokenizer arguments {sorted(text_kwargs)} but no `text`.")
        if images is not None:
            data.update(self.image_processor(images, return_tensors=return_tensors, **(images_kwargs or {})))
        if audio is not None:
            data.update(
                self.feature_extractor(
                    audio, sampling_rate=sampling_rate, return_tensors=return_tensors, **(audio_kwargs or {})
                )
            )
        return BatchFeature(data, tensor_type=return_tensors)

    def _tokenize(self, text, padding, truncation, max_length, return_tensors, text_kwargs) -> dict:
        texts = [text] if isinstance(text, str) else text
        if not isinstance(texts, (list, tuple)) or len(texts) == 0:
            raise ValueError(f"`text` must be a string or a non-empty list of strings, got {text!r:.100}.")
        for index, sample in enumerate(texts):
            if not isinstance(sample, str):
                raise ValueError(f"Text {index} is a {type(sample).__name__}, not a string: {sample!r:.100}.")
            if not sample.strip():
                raise ValueError(f"Text {index} is empty ({sample!r}); drop it or give it a caption.")
        limit = self.tokenizer.model_max_length if max_length is None else max_length
        if not truncation:
            # Checked here, because the tokenizer would only warn and the model would fail later on positions.
            lengths = [len(ids) for ids in self.tokenizer(list(texts), **text_kwargs)["input_ids"]]
            for index, length in enumerate(lengths):
                if length > limit:
                    raise ValueError(
                        f"Text {index} is {length} tokens long, more than the limit of {limit} "
                        f"({'max_length' if max_length is not None else 'tokenizer.model_max_length'}); "
                        "shorten it or pass truncation=True."
                    )
        return self.tokenizer(
            list(texts), padding=padding, truncation=truncation, max_length=limit, return_tensors=return_tensors,
            **text_kwargs,
        )

    def post_process_image_text_to_text(self, generated_outputs, skip_special_tokens: bool = True, **kwargs):
        """Decodes generated token ids `(batch, length)` into strings (used by the image-text-to-text pipeline)."""
        return self.tokenizer.batch_decode(generated_outputs, skip_special_tokens=skip_special_tokens, **kwargs)


MMProcessor.register_for_auto_class("AutoProcessor")

__all__ = ["MMProcessor"]
