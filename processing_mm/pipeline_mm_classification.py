"""The multimodal classification pipeline for `MMForClassification` checkpoints: any mix of text, image and audio.

Hub remote code, like `pipeline_mm.py`: every saved mm model carries it and its `config.json` names it under
`custom_pipelines`, so `pipeline("multimodal-classification", model=folder, trust_remote_code=True)` works without mm
installed. One modality alone also works through the stock `image-classification`, `audio-classification` and
`text-classification` pipelines.
"""

import numpy as np
import torch
from transformers import Pipeline
from transformers.image_utils import load_image

from .pipeline_mm import _read_audio


class MMClassificationPipeline(Pipeline):
    """Classifies (or scores) items given as dicts of any of `"text"`, `"image"` and `"audio"`.

    Example:
    ```python
    >>> from transformers import pipeline
    >>> clf = pipeline("multimodal-classification", model="path/to/mm-classifier", trust_remote_code=True)  # doctest: +SKIP
    >>> clf({"image": "scene.png", "text": "a red circle on the left"})  # doctest: +SKIP
    [{'label': 'match', 'score': 0.93}, {'label': 'mismatch', 'score': 0.07}]
    ```
    A model with several tasks answers `{task: [...]}` for each; a regression task answers `{"label", "score"}` with
    the predicted value as the score.
    """

    _load_processor = True
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False

    def _sanitize_parameters(self, top_k=None, timeout=None):
        preprocess_params = {} if timeout is None else {"timeout": timeout}
        postprocess_params = {} if top_k is None else {"top_k": top_k}
        return preprocess_params, {}, postprocess_params

    def __call__(self, inputs=None, **kwargs):
        """Args: `inputs`, a dict `{"text": str, "image": PIL image | path | URL, "audio": samples (16 kHz) | path |
        {"array", "sampling_rate"}}` with any non-empty subset of the keys, or a list of such dicts;
        `top_k` (classes returned per task, default all)."""
        return super().__call__(inputs, **kwargs)

    def preprocess(self, inputs, timeout=None):
        if not isinstance(inputs, dict) or not inputs:
            raise ValueError(
                f"MMClassificationPipeline takes a dict with any of 'text', 'image' and 'audio', got {inputs!r:.100}."
            )
        unknown = set(inputs) - {"text", "image", "audio"}
        if unknown:
            raise ValueError(f"Unknown input keys {sorted(unknown)}: give any of 'text', 'image' and 'audio'.")
        kwargs = {}
        if inputs.get("text") is not None:
            kwargs["text"] = inputs["text"]
        if inputs.get("image") is not None:
            kwargs["images"] = load_image(inputs["image"], timeout=timeout)
        if inputs.get("audio") is not None:
            rate = self.processor.feature_extractor.sampling_rate
            audio = inputs["audio"]
            audio = _read_audio(audio, rate) if isinstance(audio, (str, bytes)) else audio
            if isinstance(audio, dict):
                if audio["sampling_rate"] != rate:
                    raise ValueError(f"Audio at {audio['sampling_rate']} Hz: this model takes {rate} Hz; resample it.")
                audio = audio["array"]
            kwargs.update(audio=np.asarray(audio, dtype=np.float32), sampling_rate=rate)
        if not kwargs:
            raise ValueError("MMClassificationPipeline got no text, image or audio (all were None).")
        features = self.processor(**kwargs, return_tensors="pt")
        return {key: value.to(self.dtype) if value.is_floating_point() else value for key, value in features.items()}

    def _forward(self, model_inputs):
        out = self.model(**model_inputs)
        return out.task_logits or {None: out.logits}

    def postprocess(self, model_outputs, top_k=None):
        specs = self.model.config.task_specs()
        results = {}
        for task, logits in model_outputs.items():
            spec = specs[task] if task is not None else next(iter(specs.values()))
            results[task] = _scores(spec, logits[0].float(), top_k)
        return results[None] if None in results else results


def _scores(spec, logits, top_k):
    kind = spec["problem_type"]
    if kind == "regression":
        values = logits.tolist()
        return {"label": "value", "score": values[0]} if len(values) == 1 else {"label": "values", "score": values}
    scores = torch.sigmoid(logits) if kind == "multi_label_classification" else torch.softmax(logits, -1)
    labels = spec["labels"] or [f"LABEL_{i}" for i in range(len(scores))]
    ranked = sorted(zip(labels, scores.tolist()), key=lambda pair: -pair[1])
    return [{"label": label, "score": score} for label, score in ranked[: top_k or len(ranked)]]
