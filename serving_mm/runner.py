"""What the server runs: one loaded mm checkpoint behind a small interface (embed texts, images or audio; caption).

`load_runner(path)` loads a local folder or a Hub id written by `examples/run_clip.py` or `run_captioning.py`, in
PyTorch fp32, PyTorch with int8 dynamic quantization of its linear layers, or ONNX Runtime on the
files `serving_mm.export` wrote (fp32, or their int8 version from `mm-export --int8`). Every backend takes decoded
media (strings, RGB PIL images, 1-D float waveforms at the processor's rate) and returns L2-normalised float32 numpy
embeddings, so the server, the index builder and the benchmarks share one code path.
"""

import json
import logging
from pathlib import Path

import numpy as np
import torch

from modeling_mm import MMForConditionalGeneration, MMModel
from processing_mm import MMProcessor
from training_mm.processors import load_processor

from .export_captioner import OnnxCaptioner

logger = logging.getLogger("mm-serve")

BACKENDS = ("torch", "int8", "onnx", "onnx-int8")
ONNX_BACKENDS = ("onnx", "onnx-int8")  # each runs the files in the checkpoint's subfolder of its name
CAPTIONER = "MMForConditionalGeneration"


class TorchRunner:
    """An `MMModel` (or the towers of an `MMForConditionalGeneration`) with its processor, in PyTorch.

    Args:
        model: an `MMModel` or `MMForConditionalGeneration`, in eval mode.
        processor: the checkpoint's `MMProcessor`.
        max_new_tokens: the caption length limit (default: the model's generation config).
    """

    backend = "torch"

    def __init__(self, model, processor: MMProcessor, max_new_tokens: int | None = None):
        self.captioner = model if isinstance(model, MMForConditionalGeneration) else None
        self.model = model.mm if self.captioner is not None else model
        self.processor = processor
        self.max_new_tokens = max_new_tokens
        self.sampling_rate = processor.feature_extractor.sampling_rate
        self.logit_scale = self.model.logit_scale.exp().clamp(max=100.0).item()
        self.logit_bias = self.model.logit_bias.item() if self.model.logit_bias is not None else 0.0
        self.embedding_dim = self.model.config.projection_dim
        self.loss_type = self.model.config.loss_type  # "siglip" scores are sigmoids, "clip" scores a softmax

    @property
    def capabilities(self) -> list[str]:
        """What this checkpoint can serve: embeddings of each modality, and captions when it is a captioner."""
        return ["text", "image", "audio"] + (["caption"] if self.captioner is not None else [])

    def handlers(self) -> dict:
        """The batch functions the server's `DynamicBatcher` runs, by kind of request."""
        handlers = {"text": self.embed_text, "image": self.embed_images, "audio": self.embed_audio}
        if self.captioner is not None:
            handlers.update(caption_image=self.caption_images, caption_audio=self.caption_audio)
        return handlers

    @torch.inference_mode()
    def embed_text(self, texts: list[str]) -> np.ndarray:
        batch = self.processor(text=texts, return_tensors="pt")
        return _numpy(self.model.get_text_features(batch["input_ids"], batch["attention_mask"]))

    @torch.inference_mode()
    def embed_images(self, images: list) -> np.ndarray:
        batch = self.processor(images=images, return_tensors="pt")
        return _numpy(self.model.get_image_features(batch["pixel_values"]))

    @torch.inference_mode()
    def embed_audio(self, clips: list[np.ndarray]) -> np.ndarray:
        batch = self.processor(audio=clips, sampling_rate=self.sampling_rate, return_tensors="pt")
        return _numpy(self.model.get_audio_features(batch["input_features"], batch["audio_attention_mask"]))

    @torch.inference_mode()
    def caption_images(self, images: list) -> list[str]:
        batch = self.processor(images=images, return_tensors="pt")
        return self._generate(pixel_values=batch["pixel_values"])

    @torch.inference_mode()
    def caption_audio(self, clips: list[np.ndarray]) -> list[str]:
        batch = self.processor(audio=clips, sampling_rate=self.sampling_rate, return_tensors="pt")
        features, mask = batch["input_features"], batch["audio_attention_mask"]
        return self._generate(input_features=features, audio_attention_mask=mask)

    def _generate(self, **media) -> list[str]:
        if self.captioner is None:
            raise CapabilityError("This checkpoint is an MMModel (embeddings only), not a captioner.")
        kwargs = {"do_sample": False, "num_beams": 1}
        if self.max_new_tokens is not None:
            kwargs["max_new_tokens"] = self.max_new_tokens
        return self._decode(self.captioner.generate(**media, **kwargs))

    def _decode(self, tokens) -> list[str]:
        return [text.strip() for text in self.processor.tokenizer.batch_decode(tokens, skip_special_tokens=True)]


class Int8Runner(TorchRunner):
    """`TorchRunner` on the model with PyTorch's dynamic int8 quantization of every linear layer
    (`serving_mm.export.quantize_int8`)."""

    backend = "int8"

    def __init__(self, model, processor: MMProcessor, max_new_tokens: int | None = None):
        from .export import quantize_int8

        super().__init__(quantize_int8(model), processor, max_new_tokens)


class OnnxRunner(TorchRunner):
    """Embeddings from the ONNX towers that `serving_mm.export` wrote (`<checkpoint>/onnx/{text,image,audio}.onnx`),
    and for a captioner greedy captions from its exported encoders and decoder step (`serving_mm.export_captioner`),
    run with ONNX Runtime on CPU. What was not exported (`mm-export --towers image`) runs in PyTorch; `onnx_towers`
    lists what does not ("captioner" for the decoder)."""

    backend = "onnx"

    def __init__(self, model, processor: MMProcessor, onnx_dir, max_new_tokens: int | None = None):
        import onnxruntime

        super().__init__(model, processor, max_new_tokens)
        paths = {tower: Path(onnx_dir) / f"{tower}.onnx" for tower in ("text", "image", "audio")}
        self.sessions = {
            tower: onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            for tower, path in paths.items()
            if path.is_file()
        }
        self.onnx_captioner = None
        if self.captioner is not None and OnnxCaptioner.available(onnx_dir):
            self.onnx_captioner = OnnxCaptioner(onnx_dir, self.captioner.generation_config)
        if not self.sessions and self.onnx_captioner is None:
            raise FileNotFoundError(
                f"No exported tower in {onnx_dir}: run `mm-export {Path(onnx_dir).parent}"
                f"{' --int8' if Path(onnx_dir).name == 'onnx-int8' else ''}` first."
            )
        self.onnx_towers = sorted(self.sessions) + (["captioner"] if self.onnx_captioner is not None else [])
        logger.info("ONNX Runtime runs the %s tower(s); PyTorch runs the rest.", ", ".join(self.onnx_towers))

    def embed_text(self, texts):
        if "text" not in self.sessions:
            return super().embed_text(texts)
        batch = self.processor(text=texts, return_tensors="np")
        return self._run("text", batch["input_ids"], batch["attention_mask"])

    def embed_images(self, images):
        if "image" not in self.sessions:
            return super().embed_images(images)
        return self._run("image", self.processor(images=images, return_tensors="np")["pixel_values"])

    def embed_audio(self, clips):
        if "audio" not in self.sessions:
            return super().embed_audio(clips)
        batch = self.processor(audio=clips, sampling_rate=self.sampling_rate, return_tensors="np")
        return self._run("audio", batch["input_features"], batch["audio_attention_mask"])

    def caption_images(self, images):
        if self.onnx_captioner is None or "image" not in self.onnx_captioner.encoders:
            return super().caption_images(images)
        return self._caption("image", self.processor(images=images, return_tensors="np")["pixel_values"])

    def caption_audio(self, clips):
        if self.onnx_captioner is None or "audio" not in self.onnx_captioner.encoders:
            return super().caption_audio(clips)
        batch = self.processor(audio=clips, sampling_rate=self.sampling_rate, return_tensors="np")
        return self._caption("audio", batch["input_features"], batch["audio_attention_mask"])

    def _caption(self, modality, *arrays):
        tokens = self.onnx_captioner.generate(modality, *arrays, max_new_tokens=self.max_new_tokens)
        return self._decode(tokens)

    def _run(self, tower, *arrays):
        session = self.sessions[tower]
        feed = {
            spec.name: array.astype(np.int64 if array.dtype.kind in "iu" else np.float32)
            for spec, array in zip(session.get_inputs(), arrays)
        }
        return session.run(None, feed)[0]


class CapabilityError(LookupError):
    """The checkpoint cannot do what was asked (e.g. captioning with an embeddings-only model)."""


def load_runner(checkpoint: str, backend: str = "torch", max_new_tokens: int | None = None) -> TorchRunner:
    """Loads an mm checkpoint (a local folder or a Hub id) for serving.

    Args:
        checkpoint: what `from_pretrained` takes; an `MMForConditionalGeneration` checkpoint (its config's
            `architectures`) is loaded as a captioner, anything else as an `MMModel`.
        backend: "torch" (fp32), "int8" (PyTorch dynamic int8 quantization of every linear layer), "onnx"
            (the files in `<checkpoint>/onnx/`, from `mm-export`) or "onnx-int8" (`<checkpoint>/onnx-int8/`, from
            `mm-export --int8`).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not one of {BACKENDS}.")
    task_runner = _task_runner(checkpoint, backend)
    if task_runner is not None:
        return task_runner
    model_class = MMForConditionalGeneration if CAPTIONER in _architectures(checkpoint) else MMModel
    model = model_class.from_pretrained(checkpoint).eval()
    processor = load_processor(checkpoint, config=model.config)  # this package's classes, not the saved remote code
    if backend == "int8":
        return Int8Runner(model, processor, max_new_tokens)
    if backend in ONNX_BACKENDS:
        folder = Path(checkpoint)
        if not folder.is_dir():
            raise ValueError(
                f"backend={backend!r} needs a local checkpoint folder with an {backend}/ subfolder, "
                f"got {checkpoint!r}."
            )
        runner = OnnxRunner(model, processor, folder / backend, max_new_tokens)
        runner.backend = backend
        return runner
    return TorchRunner(model, processor, max_new_tokens)


def _task_runner(checkpoint: str, backend: str):
    """The runner of a classifier, text-to-speech or text-to-image checkpoint (`serving_mm.task_runners`), or None for
    an `MMModel` or captioner. These run in PyTorch: `int8` quantizes the classifier's and speech model's linear
    layers; `onnx` is refused (only the towers and the captioner are exported)."""
    from modeling_mm import MMForClassification, MMForTextToSpeech

    from .task_runners import ClassifierRunner, SpeechRunner, TextToImageRunner

    if (Path(checkpoint) / "model_index.json").is_file():
        kind, load = "text-to-image pipeline", None
    else:
        architectures = _architectures(checkpoint)
        kinds = {"MMForClassification": MMForClassification, "MMForTextToSpeech": MMForTextToSpeech}
        kind = next((name for name in kinds if name in architectures), None)
        if kind is None:
            return None
        load = kinds[kind]
    if backend in ONNX_BACKENDS or (backend == "int8" and load is None):
        raise ValueError(
            f"backend={backend!r} is not available for a {kind} checkpoint ({checkpoint}); serve it with "
            f"--backend torch{'' if load is None else ' or int8'}."
        )
    if load is None:
        return TextToImageRunner(_load_text_to_image(checkpoint))
    model = load.from_pretrained(checkpoint).eval()
    if backend == "int8":
        from .export import quantize_int8

        model = quantize_int8(model)
    processor = load_processor(checkpoint, config=model.config)
    if load is MMForClassification:
        runner = ClassifierRunner(model, processor)
    else:
        runner = SpeechRunner(model, processor)
    runner.backend = backend
    return runner


def _load_text_to_image(folder):
    """An `MMTextToImagePipeline` from its saved folder, built from this package's and diffusers' classes, so none of
    the folder's own code runs (`DiffusionPipeline.from_pretrained` would need `trust_remote_code=True` for it)."""
    import diffusers
    from transformers import AutoTokenizer

    from modeling_mm import MMTextModel
    from modeling_mm.pipeline_mm_text_to_image import MMTextToImagePipeline

    folder = Path(folder)
    scheduler_class = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())["_class_name"]
    return MMTextToImagePipeline(
        unet=diffusers.UNet2DConditionModel.from_pretrained(folder / "unet").eval(),
        scheduler=getattr(diffusers, scheduler_class).from_pretrained(folder / "scheduler"),
        text_encoder=MMTextModel.from_pretrained(folder / "text_encoder").eval(),
        tokenizer=AutoTokenizer.from_pretrained(folder / "tokenizer", trust_remote_code=False),
    )


def _architectures(checkpoint: str) -> list[str]:
    local = Path(checkpoint) / "config.json"
    if local.is_file():
        return json.loads(local.read_text()).get("architectures") or []
    from transformers import PretrainedConfig

    return PretrainedConfig.get_config_dict(checkpoint)[0].get("architectures") or []


def _numpy(features) -> np.ndarray:
    """The L2-normalised embeddings of a `get_*_features` output (which, as CLIP's, are projected, not normalised)."""
    embeds = getattr(features, "pooler_output", features)
    return torch.nn.functional.normalize(embeds.float(), dim=-1).cpu().numpy()
