"""Pipelines for `MMForConditionalGeneration` checkpoints: image to text, and speech (or any audio) to text.

This file is Hub remote code: every saved mm model carries it, and its `config.json` names its classes under
`custom_pipelines`, which `pipeline()` reads before its own task table. That is what makes
`pipeline("image-to-text", model=folder, trust_remote_code=True)` work on every transformers 5.x (the stock task was
removed in 5.0 and later rerouted to image-text-to-text, which refuses an image without a prompt), and what makes
`pipeline("automatic-speech-recognition", ...)` generate instead of treating an unknown model as CTC.
It imports only `transformers`, `torch`, `numpy` and the standard library (`soundfile` where installed).

Prompted generation needs nothing from here: the stock `image-text-to-text` pipeline drives the model through
`AutoModelForImageTextToText`, the processor and `processor.post_process_image_text_to_text`.
"""

import copy
import os

from transformers import AutomaticSpeechRecognitionPipeline, Pipeline
from transformers.image_utils import load_image

from .feature_extraction_mm import read_audio


def _generate_kwargs(pipeline, generate_kwargs):
    """The call's generation arguments on top of the pipeline's defaults, however this transformers keeps them:
    5.18 and later merge them in `_prepare_generate_kwargs`, 5.17 holds them in `pipeline.generation_config`."""
    if hasattr(pipeline, "_prepare_generate_kwargs"):
        return pipeline._prepare_generate_kwargs(dict(generate_kwargs))
    if "generation_config" in generate_kwargs:
        return dict(generate_kwargs)
    # One config holding the call's parameters (generate() deprecates a config plus loose generation arguments).
    generation_config = copy.deepcopy(pipeline.generation_config)
    model_kwargs = generation_config.update(**generate_kwargs)
    return {**model_kwargs, "generation_config": generation_config}


class MMImageToTextPipeline(Pipeline):
    """Captions images, optionally continuing a text `prompt`.

    Example:
    ```python
    >>> from transformers import pipeline
    >>> captioner = pipeline("image-to-text", model="path/to/mm-checkpoint", trust_remote_code=True)  # doctest: +SKIP
    >>> captioner("scene.png", max_new_tokens=20)  # doctest: +SKIP
    [{'generated_text': 'a red circle left of a blue square'}]
    ```
    """

    _load_processor = True
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False
    _pipeline_calls_generate = True

    def _sanitize_parameters(self, max_new_tokens=None, generate_kwargs=None, prompt=None, timeout=None):
        preprocess_params = {}
        if prompt is not None:
            preprocess_params["prompt"] = prompt
        if timeout is not None:
            preprocess_params["timeout"] = timeout
        generate_kwargs = dict(generate_kwargs or {})
        if max_new_tokens is not None:
            if "max_new_tokens" in generate_kwargs:
                raise ValueError("max_new_tokens is given twice, directly and in generate_kwargs; give it once.")
            generate_kwargs["max_new_tokens"] = max_new_tokens
        forward_params = {"generate_kwargs": generate_kwargs} if generate_kwargs else {}
        return preprocess_params, forward_params, {}

    def __call__(self, inputs=None, **kwargs):
        """Captions `inputs`: a PIL image, a path or URL, or a list of them (then one result list per image).

        Args:
            prompt (`str`, *optional*): text the caption continues, e.g. `"a picture of"`.
            max_new_tokens (`int`, *optional*): the most tokens to write.
            generate_kwargs (`dict`, *optional*): any other `generate` argument (`num_beams`, `do_sample`, ...).

        Returns:
            `[{"generated_text": str}]` per image (the prompt, if any, included).
        """
        if inputs is None:
            inputs = kwargs.pop("images", None)
        if inputs is None:
            raise ValueError("MMImageToTextPipeline needs an image: pipe(image) or pipe(images=image).")
        return super().__call__(inputs, **kwargs)

    def preprocess(self, image, prompt=None, timeout=None):
        image = load_image(image, timeout=timeout)
        return self.processor(images=image, text=prompt, return_tensors="pt").to(dtype=self.dtype)

    def _forward(self, model_inputs, generate_kwargs=None):
        sequences = self.model.generate(**model_inputs, **_generate_kwargs(self, generate_kwargs or {}))
        return {"sequences": sequences}

    def postprocess(self, model_outputs):
        texts = self.tokenizer.batch_decode(model_outputs["sequences"], skip_special_tokens=True)
        return [{"generated_text": text.strip()} for text in texts]


class MMSpeechRecognitionPipeline(AutomaticSpeechRecognitionPipeline):
    """The stock speech-recognition pipeline, generating with the mm decoder from the audio tower's states.

    The stock pipeline decides between CTC and sequence-to-sequence decoding by the model's class name, which it
    cannot know for remote code, and hands the features to `generate` under the model's `main_input_name`; mm's
    decoder reads `input_features` and `audio_attention_mask` instead. Audio files are read with `soundfile`, so no
    ffmpeg is needed for the formats it knows (WAV, FLAC, OGG, ...).

    Example:
    ```python
    >>> from transformers import pipeline
    >>> transcriber = pipeline("automatic-speech-recognition", model="path/to/mm-checkpoint",
    ...                        trust_remote_code=True)  # doctest: +SKIP
    >>> transcriber("clip.wav")  # doctest: +SKIP
    {'text': 'a green star above a blue square'}
    ```
    """

    _load_processor = True
    _load_feature_extractor = False
    _load_tokenizer = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.type = "seq2seq"

    def preprocess(self, inputs, chunk_length_s=0, stride_length_s=None):
        if isinstance(inputs, (str, os.PathLike, bytes)) and not str(inputs).startswith(("http://", "https://")):
            inputs = _read_audio(inputs, self.feature_extractor.sampling_rate)
        yield from super().preprocess(inputs, chunk_length_s=chunk_length_s, stride_length_s=stride_length_s)

    def _forward(self, model_inputs, return_timestamps=False, return_language=None, **generate_kwargs):
        if return_timestamps:
            raise ValueError("mm speech-to-text models do not predict timestamps; call without return_timestamps.")
        model_inputs.pop("attention_mask", None)  # the audio mask is `audio_attention_mask`
        model_inputs.pop("stride", None)
        is_last = model_inputs.pop("is_last")
        tokens = self.model.generate(
            input_features=model_inputs.pop("input_features"),
            audio_attention_mask=model_inputs.pop("audio_attention_mask", None),
            **_generate_kwargs(self, generate_kwargs),
        )
        return {"is_last": is_last, "tokens": tokens, **model_inputs}


def _read_audio(source, sampling_rate):
    """A file path or encoded bytes -> the mono float32 samples (or, at another rate, what the stock pipeline
    resamples), read with soundfile; without soundfile, the stock pipeline's ffmpeg reader takes over."""
    try:
        samples, rate = read_audio(source)
    except ImportError:
        return source
    return samples if rate == sampling_rate else {"array": samples, "sampling_rate": rate}
