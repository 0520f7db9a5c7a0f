"""Runners for the checkpoints that are not embedding models: a fusion classifier (`MMForClassification`), a
text-to-speech model (`MMForTextToSpeech`) and a diffusers text-to-image pipeline (`MMTextToImagePipeline`).

Each has the interface the app needs from `serving_mm.runner.TorchRunner`: `capabilities`, `backend` and
`handlers()`, the batch functions `DynamicBatcher` runs (one model call per batch of requests), and checks that turn
bad input into an `InputError` naming the field before it is queued.
"""

import io
from itertools import groupby

import numpy as np
import soundfile
import torch

from processing_mm.pipeline_mm_classification import _scores

from .media import InputError

MAX_INFERENCE_STEPS = 200
MAX_GUIDANCE_SCALE = 50.0


class ClassifierRunner:
    """An `MMForClassification` with its processor: `classify` takes items holding any of `text`, `image` (RGB PIL)
    and `audio` (a waveform at the processor's rate) and answers as the `multimodal-classification` pipeline does:
    `[{"label", "score"}, ...]` best first (one task) or `{task: [...]}` (several); a regression task gives
    `{"label": "value", "score": <prediction>}`."""

    backend = "torch"
    capabilities = ["classify"]

    def __init__(self, model, processor):
        self.model, self.processor = model.eval(), processor
        self.sampling_rate = processor.feature_extractor.sampling_rate

    def handlers(self) -> dict:
        return {"classify": self.classify}

    @torch.inference_mode()
    def classify(self, items: list[dict]) -> list:
        """One forward call per set of modalities present (items with text and image apart from items with audio)."""
        results = [None] * len(items)
        key = lambda pair: tuple(sorted(pair[1]))  # noqa: E731
        for _, group in groupby(sorted(enumerate(items), key=key), key=key):
            rows, batch = zip(*group)
            for row, result in zip(rows, self._classify_alike(list(batch))):
                results[row] = result
        return results

    def _classify_alike(self, items):
        kwargs = {}
        if "text" in items[0]:
            kwargs["text"] = [item["text"] for item in items]
        if "image" in items[0]:
            kwargs["images"] = [item["image"] for item in items]
        if "audio" in items[0]:
            kwargs.update(audio=[item["audio"] for item in items], sampling_rate=self.sampling_rate)
        out = self.model(**self.processor(**kwargs, return_tensors="pt"))
        task_logits = out.task_logits or {None: out.logits}
        specs = self.model.config.task_specs()
        answers = []
        for row in range(len(items)):
            per_task = {
                task: _scores(specs[task] if task is not None else next(iter(specs.values())), logits[row].float(), None)
                for task, logits in task_logits.items()
            }
            answers.append(per_task[None] if None in per_task else per_task)
        return answers


class SpeechRunner:
    """An `MMForTextToSpeech` with its tokenizer: `speak` turns texts into WAV files at the model's sampling rate."""

    capabilities = ["speech"]

    backend = "torch"

    def __init__(self, model, processor):
        self.model, self.tokenizer = model.eval(), processor.tokenizer
        self.sampling_rate = model.config.speech_config.sampling_rate
        self.max_tokens = model.config.text_config.max_position_embeddings

    def handlers(self) -> dict:
        return {"speech": self.speak}

    def check_text(self, text: str, field: str) -> str:
        length = len(self.tokenizer(text)["input_ids"])
        if length > self.max_tokens:
            raise InputError(field, f"is {length} tokens long, more than this model's {self.max_tokens}; shorten it.")
        return text

    @torch.inference_mode()
    def speak(self, texts: list[str]) -> list[bytes]:
        tokens = self.tokenizer(texts, padding=True, return_tensors="pt")
        out = self.model.generate_speech(tokens["input_ids"], tokens["attention_mask"])
        lengths = out.waveform_lengths.tolist()
        return [_wav(waveform[:length].numpy(), self.sampling_rate) for waveform, length in zip(out.waveform, lengths)]


class TextToImageRunner:
    """An `MMTextToImagePipeline` folder: `generate` takes `(prompt, steps, guidance_scale, seed)` requests and
    returns PNG bytes. Requests with the same steps and guidance scale run as one batch; each image comes from its
    own seeded generator, so a seed gives the same image however the requests were batched."""

    backend = "torch"
    capabilities = ["generate"]

    def __init__(self, pipeline):
        self.pipeline = pipeline
        self.pipeline.set_progress_bar_config(disable=True)

    def handlers(self) -> dict:
        return {"generate": self.generate}

    def check_prompt(self, prompt: str, field: str) -> str:
        length = len(self.pipeline.tokenizer(prompt)["input_ids"])
        if length > self.pipeline.max_prompt_tokens:
            raise InputError(
                field, f"is {length} tokens long, more than the text tower's {self.pipeline.max_prompt_tokens}."
            )
        return prompt

    def generate(self, requests: list[tuple]) -> list[bytes]:
        images = [None] * len(requests)
        key = lambda pair: pair[1][1:3]  # noqa: E731  (steps, guidance_scale)
        for (steps, guidance), group in groupby(sorted(enumerate(requests), key=key), key=key):
            rows, batch = zip(*group)
            generators = [torch.Generator().manual_seed(seed) for _, _, _, seed in batch]
            out = self.pipeline(
                [prompt for prompt, *_ in batch], num_inference_steps=steps, guidance_scale=guidance,
                generator=generators, output_type="pil",
            )  # fmt: skip
            for row, image in zip(rows, out.images):
                buffer = io.BytesIO()
                image.save(buffer, format="PNG")
                images[row] = buffer.getvalue()
        return images


def _wav(samples: np.ndarray, rate: int) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format="WAV", subtype="FLOAT")
    return buffer.getvalue()
