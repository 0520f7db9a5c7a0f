"""ONNX export of an `MMForConditionalGeneration` captioner: the media encoders and one decoder step whose
self-attention keys/values are explicit inputs and outputs, plus greedy decoding from them in ONNX Runtime.

`export_captioner(model, folder, examples)` writes, next to the towers of `serving_mm.export`:

    caption_image_encoder.onnx   pixel_values (B, 3, H, W) -> encoder_hidden_states (B, N, D), encoder_attention_mask (B, N)
    caption_audio_encoder.onnx   input_features (B, mels, F), audio_attention_mask (B, F) -> the same two outputs
    decoder_step.onnx            input_ids (B, T), attention_mask (B, P + T), encoder_hidden_states (B, N, D),
                                 encoder_attention_mask (B, N), past_key_<i>, past_value_<i> (B, heads, P, head_dim)
                                 -> logits (B, vocab) of the last position, present_key_<i>, present_value_<i>
                                 (B, heads, P + T, head_dim) for each decoder layer i

The first step takes past keys/values of length 0. Each step recomputes the cross-attention keys/values from the
encoder states (a few small matmuls at these sizes) rather than carrying a second cache through the graph, which
keeps one graph for every step. `OnnxCaptioner.generate` runs greedy decoding exactly as `model.generate(...,
do_sample=False, num_beams=1)` does (start from `<s>`, stop at `</s>` or `max_new_tokens`, pad finished rows), and
`export_captioner` checks that both write the same tokens.
"""

from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers.cache_utils import DynamicCache

from modeling_mm.modeling_mm_utils import CACHE_NAME

ENCODERS = ("image", "audio")
STEP_FILE = "decoder_step.onnx"


def encoder_file(modality: str) -> str:
    return f"caption_{modality}_encoder.onnx"


class CaptionEncoder(nn.Module):
    """What the decoder attends to for one modality: `(encoder_hidden_states (B, N, D), encoder_attention_mask
    (B, N))`, the mask all ones for images (never padded)."""

    def __init__(self, model, modality: str):
        super().__init__()
        self.model, self.modality = model, modality

    def forward(self, inputs, mask=None):
        if self.modality == "image":
            states, _ = self.model.get_encoder_hidden_states(pixel_values=inputs)
            return states, torch.ones(states.shape[:2], dtype=torch.long)
        states, states_mask = self.model.get_encoder_hidden_states(input_features=inputs, audio_attention_mask=mask)
        return states, states_mask


class DecoderStep(nn.Module):
    """One decoding step of the captioner with the self-attention cache as flat tensors: `forward(input_ids,
    attention_mask, encoder_hidden_states, encoder_attention_mask, *past)` with `past` = (key_0, value_0, key_1, ...)
    returns `(logits of the last position (B, vocab), *present)` in the same order."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.num_layers = model.config.decoder_config.num_hidden_layers

    def forward(self, input_ids, attention_mask, encoder_hidden_states, encoder_attention_mask, *past):
        cache = DynamicCache(config=self.model.config.decoder_config)
        for layer in range(self.num_layers):
            cache.update(past[2 * layer], past[2 * layer + 1], layer)
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        present = [tensor for layer in getattr(out, CACHE_NAME).layers for tensor in (layer.keys, layer.values)]
        return (out.logits[:, -1], *present)


def past_names(num_layers: int, prefix: str = "past") -> list[str]:
    return [f"{prefix}_{kind}_{layer}" for layer in range(num_layers) for kind in ("key", "value")]


def empty_past(config, batch: int, length: int = 0) -> list[torch.Tensor]:
    """Past keys/values (B, heads, length, head_dim) per layer, random when `length` > 0 (for tracing)."""
    heads = config.num_attention_heads
    shape = (batch, heads, length, config.hidden_size // heads)
    return [torch.randn(shape) for _ in range(2 * config.num_hidden_layers)]


def export_captioner(model, output_dir, examples: dict[str, dict[str, torch.Tensor]]) -> dict[str, int]:
    """Writes the encoder of each modality in `examples` and the decoder step of `model` to `output_dir` with
    `torch.onnx.export(dynamo=True)`, then decodes `examples` (per modality, the processor's media inputs of at least
    two items) greedily with both PyTorch and ONNX Runtime. Returns, per modality, how many of the examples' captions
    differ (0 when they agree token for token); raises if any does."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    config = model.config.decoder_config
    batch, items, past = torch.export.Dim("batch", min=1, max=1024), torch.export.Dim("items", min=1, max=1 << 16), None
    with torch.no_grad():
        for modality in examples:
            inputs = examples[modality]
            shapes = {"pixel_values": {0: batch}} if modality == "image" else {
                "input_features": {0: batch, 2: items}, "audio_attention_mask": {0: batch, 1: items}
            }  # fmt: skip
            _save(
                CaptionEncoder(model, modality), inputs, shapes, ["encoder_hidden_states", "encoder_attention_mask"],
                output_dir / encoder_file(modality),
            )  # fmt: skip
        past = empty_past(config, 2, length=3)
        length = torch.export.Dim("past", min=1, max=4096)
        step_inputs = {
            "input_ids": torch.randint(3, config.vocab_size, (2, 1)),
            "attention_mask": torch.ones(2, 4, dtype=torch.long),
            "encoder_hidden_states": torch.randn(2, 5, config.hidden_size),
            "encoder_attention_mask": torch.ones(2, 5, dtype=torch.long),
            **dict(zip(past_names(config.num_hidden_layers), past)),
        }
        shapes = {
            "input_ids": {0: batch},
            "attention_mask": {0: batch, 1: length + 1},
            "encoder_hidden_states": {0: batch, 1: items},
            "encoder_attention_mask": {0: batch, 1: items},
            "past": tuple({0: batch, 2: length} for _ in past),
        }
        _save(
            DecoderStep(model), step_inputs, shapes, ["logits", *past_names(config.num_hidden_layers, "present")],
            output_dir / STEP_FILE,
        )  # fmt: skip
    agreement = caption_agreement(model, output_dir, examples)
    for modality, (differing, _) in agreement.items():
        if differing:
            raise RuntimeError(
                f"Greedy decoding from the exported decoder step wrote {differing} of "
                f"{len(next(iter(examples[modality].values())))} {modality} captions differently from PyTorch."
            )
    return {modality: differing for modality, (differing, _) in agreement.items()}


def caption_agreement(model, folder, examples: dict[str, dict[str, torch.Tensor]]) -> dict[str, tuple[int, float]]:
    """Greedy-decodes `examples` (per modality, the processor's media inputs) with `model` in PyTorch and with the
    files in `folder` (`export_captioner`'s, or their int8 version from `serving_mm.export.quantize_onnx_int8`) in
    ONNX Runtime. Returns, per modality, `token_agreement` of the two."""
    captioner = OnnxCaptioner(folder, model.generation_config)
    agreement = {}
    with torch.no_grad():
        for modality, inputs in examples.items():
            expected = model.generate(**inputs, do_sample=False, num_beams=1).numpy()
            actual = captioner.generate(modality, *(value.numpy() for value in inputs.values()))
            agreement[modality] = token_agreement(expected, actual, captioner.pad)
    return agreement


def token_agreement(expected: np.ndarray, actual: np.ndarray, pad: int) -> tuple[int, float]:
    """(How many rows of two greedy generations (B, 1 + new tokens) differ, the fraction of generated positions whose
    tokens agree, over the positions where either row has a token other than `pad`)."""
    width = max(expected.shape[1], actual.shape[1])  # rows that stop earlier are padded, as generate pads them
    expected, actual = (
        np.pad(tokens, ((0, 0), (0, width - tokens.shape[1])), constant_values=pad) for tokens in (expected, actual)
    )
    differing = int((expected != actual).any(axis=1).sum())
    generated = (expected[:, 1:] != pad) | (actual[:, 1:] != pad)
    agree = (expected[:, 1:] == actual[:, 1:])[generated]
    return differing, float(agree.mean()) if agree.size else 1.0


class OnnxCaptioner:
    """Greedy captioning with the files `export_captioner` wrote, in ONNX Runtime on CPU.

    Args:
        folder: where the files are.
        generation_config: the model's (`bos_token_id`/`decoder_start_token_id`, `eos_token_id`, `pad_token_id`,
            `max_new_tokens`).
    """

    def __init__(self, folder, generation_config):
        import onnxruntime

        folder = Path(folder)
        session = lambda path: onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])  # noqa: E731
        self.encoders = {m: session(folder / encoder_file(m)) for m in ENCODERS if (folder / encoder_file(m)).is_file()}
        self.step = session(folder / STEP_FILE)
        self.step_inputs = [spec.name for spec in self.step.get_inputs()]
        past = self.step.get_inputs()[4]  # (batch, heads, past, head_dim)
        self.heads, self.head_dim = past.shape[1], past.shape[3]
        self.num_layers = (len(self.step_inputs) - 4) // 2
        eos = generation_config.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [eos])
        self.bos = generation_config.bos_token_id
        self.pad = generation_config.pad_token_id if generation_config.pad_token_id is not None else min(self.eos)
        self.max_new_tokens = generation_config.max_new_tokens

    @classmethod
    def available(cls, folder) -> bool:
        return (Path(folder) / STEP_FILE).is_file()

    def encode(self, modality: str, *arrays: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        session = self.encoders[modality]
        feed = {spec.name: _onnx_dtype(array) for spec, array in zip(session.get_inputs(), arrays)}
        states, mask = session.run(None, feed)
        return states, mask

    def generate(self, modality: str, *arrays: np.ndarray, max_new_tokens: int | None = None) -> np.ndarray:
        """Token ids (B, 1 + new tokens) for the media `arrays` (the processor's `pixel_values`, or `input_features`
        and `audio_attention_mask`): `<s>`, then the greedy continuation, `pad` after a row's `</s>`."""
        states, states_mask = self.encode(modality, *arrays)
        batch = states.shape[0]
        tokens = np.full((batch, 1), self.bos, dtype=np.int64)
        mask = np.ones((batch, 1), dtype=np.int64)
        past = [np.zeros((batch, self.heads, 0, self.head_dim), np.float32) for _ in range(2 * self.num_layers)]
        finished = np.zeros(batch, dtype=bool)
        for _ in range(max_new_tokens or self.max_new_tokens):
            logits, *past = self.step.run(
                None, dict(zip(self.step_inputs, [tokens[:, -1:], mask, states, states_mask, *past]))
            )
            next_tokens = np.where(finished, self.pad, logits.argmax(axis=-1))
            tokens = np.concatenate([tokens, next_tokens[:, None]], axis=1)
            finished |= np.isin(next_tokens, list(self.eos))
            if finished.all():
                break
            mask = np.concatenate([mask, np.ones((batch, 1), dtype=np.int64)], axis=1)
        return tokens


def _save(module, inputs: dict, dynamic_shapes: dict, output_names: list[str], path: Path):
    names = list(inputs)
    program = torch.onnx.export(
        module.eval(),
        tuple(inputs.values()),
        input_names=names,
        output_names=output_names,
        dynamic_shapes=_by_parameter(module, dynamic_shapes),
        dynamo=True,
    )
    program.save(str(path), external_data=False)


def _by_parameter(module, shapes: dict):
    """`dynamic_shapes` keyed by the forward's parameter names (what torch.export matches them to)."""
    import inspect

    parameters = list(inspect.signature(module.forward).parameters)
    values = list(shapes.values())
    return {parameter: value for parameter, value in zip(parameters, values)}


def _onnx_dtype(array: np.ndarray) -> np.ndarray:
    return array.astype(np.int64 if array.dtype.kind in "iu" else np.float32)
