"""Smaller and faster mm models: ONNX export of the three towers and int8 dynamic quantization.

`mm-export CHECKPOINT` writes `<checkpoint>/onnx/{text,image,audio}.onnx` (the dynamo exporter, dynamic batch and
length), checks each against PyTorch with ONNX Runtime (max abs difference of the embeddings) and prints the
figures; for a captioner it also writes its encoders and decoder step (`serving_mm.export_captioner`) and checks that
greedy decoding from them writes PyTorch's tokens. `mm-serve CHECKPOINT --backend onnx` then serves them.
`mm-export CHECKPOINT --int8` also writes their int8 version (`quantize_onnx_int8`, ONNX Runtime's dynamic
quantization) to `<checkpoint>/onnx-int8/` and prints its agreement with PyTorch, for `--backend onnx-int8`.
`quantize_int8` is PyTorch's dynamic quantization of every `nn.Linear` (int8 weights, activations quantized per
batch); `mm-serve --backend int8` applies it at load.
"""

import argparse
import copy
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from modeling_mm import MMForConditionalGeneration

logger = logging.getLogger("mm-export")

TOWERS = ("text", "image", "audio")
PARITY_ATOL = 1e-4  # max abs difference between ONNX Runtime's and PyTorch's fp32 embeddings


class TowerEmbedding(nn.Module):
    """One tower of an `MMModel` plus its projection, as a module whose forward returns the L2-normalised
    embeddings (B, projection_dim): what the exporter traces."""

    def __init__(self, model, tower: str):
        super().__init__()
        self.model = model.mm if isinstance(model, MMForConditionalGeneration) else model
        self.tower = tower

    def forward(self, inputs, mask=None):
        if self.tower == "text":
            outputs = self.model.get_text_features(inputs, mask)
        elif self.tower == "image":
            outputs = self.model.get_image_features(inputs)
        else:
            outputs = self.model.get_audio_features(inputs, mask)
        return nn.functional.normalize(outputs.pooler_output, dim=-1)  # get_*_features project, as CLIP's, unnormalised


def example_inputs(config, tower: str, batch: int = 2, length: int = 8) -> dict[str, torch.Tensor]:
    """Inputs of the shapes the processor makes for `tower` (texts of `length` tokens, clips of `6 * length` frames),
    for tracing and checks."""
    generator = torch.Generator().manual_seed(0)
    if tower == "text":
        ids = torch.randint(3, config.text_config.vocab_size, (batch, length), generator=generator)
        mask = torch.ones_like(ids)
        mask[0, 6:] = 0  # one padded text, so the mask's effect is traced and checked
        return {"input_ids": ids, "attention_mask": mask}
    if tower == "image":
        size = config.vision_config.image_size
        return {"pixel_values": torch.randn(batch, 3, size, size, generator=generator)}
    frames = min(6 * length, 2 * config.audio_config.max_source_positions)
    mask = torch.ones(batch, frames, dtype=torch.long)
    mask[0, frames * 3 // 4 :] = 0
    features = torch.randn(batch, config.audio_config.num_mel_bins, frames, generator=generator)
    return {"input_features": features, "audio_attention_mask": mask}


def _dynamic_shapes(tower: str, inputs: dict) -> dict:
    batch = torch.export.Dim("batch", min=1, max=1024)
    if tower == "text":
        length = torch.export.Dim("length", min=2, max=4096)
        return {name: {0: batch, 1: length} for name in inputs}
    if tower == "image":
        return {"pixel_values": {0: batch}}
    frames = torch.export.Dim("frames", min=4, max=1 << 16)
    return {"input_features": {0: batch, 2: frames}, "audio_attention_mask": {0: batch, 1: frames}}


def export_onnx(model, output_dir, towers=TOWERS) -> dict[str, float]:
    """Exports each tower to `<output_dir>/<tower>.onnx` with `torch.onnx.export(dynamo=True)` and returns, per tower,
    the max abs difference between ONNX Runtime's and PyTorch's embeddings on `example_inputs` (a batch size and
    length other than the traced ones, so the dynamic axes are exercised). Raises if one exceeds `PARITY_ATOL`."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    differences = {}
    for tower in towers:
        module = TowerEmbedding(model, tower).eval()
        inputs = example_inputs(model.config, tower)
        path = output_dir / f"{tower}.onnx"
        with torch.no_grad():
            program = torch.onnx.export(
                module,
                tuple(inputs.values()),
                input_names=list(inputs),
                output_names=["embeds"],
                dynamic_shapes=dict(zip(("inputs", "mask"), _dynamic_shapes(tower, inputs).values())),
                dynamo=True,
            )
        program.save(str(path), external_data=False)  # one self-contained file per tower
        differences[tower] = onnx_parity(module, path, example_inputs(model.config, tower, batch=3, length=11))
        if differences[tower] > PARITY_ATOL:
            raise RuntimeError(
                f"The exported {tower} tower differs from PyTorch by {differences[tower]:.2e} (> {PARITY_ATOL})."
            )
    return differences


def onnx_parity(module, path, inputs: dict[str, torch.Tensor]) -> float:
    """Max abs difference between `module(**inputs)` in PyTorch and the ONNX file at `path` in ONNX Runtime."""
    expected, actual = _both_outputs(module, path, inputs)
    return float(np.abs(actual - expected).max())


def _both_outputs(module, path, inputs: dict[str, torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = module(*inputs.values()).numpy()
    return expected, session.run(None, {name: value.numpy() for name, value in inputs.items()})[0]


def onnx_cosine(module, path, inputs: dict[str, torch.Tensor]) -> float:
    """The lowest cosine between `module(**inputs)`'s embeddings in PyTorch and the ONNX file's at `path`."""
    expected, actual = _both_outputs(module, path, inputs)
    norms = np.linalg.norm(expected, axis=1) * np.linalg.norm(actual, axis=1)
    return float(np.min(np.sum(expected * actual, axis=1) / norms))


def quantize_int8(model):
    """A copy of `model` with every `nn.Linear` replaced by PyTorch's dynamically quantized int8 linear (int8 weights
    with a per-tensor scale; activations quantized on the fly), for CPU inference.

    Chosen over torchao's int8 weight-only quantization by measurement: both keep cosine >= 0.9999 and recall on a
    trained checkpoint, but torchao's ran 12-53% slower on CPU in eager mode, and its int8-activation variant 10-20x
    slower (README, "Serving, search and export"; benchmarks/bench_export.py).
    """
    import warnings

    with warnings.catch_warnings():
        # torch.ao.quantization announces its move to torchao; its int8 tensors work as documented meanwhile.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message="torch.quantize_per_tensor")
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(copy.deepcopy(model).eval(), {nn.Linear}, dtype=torch.qint8)


def model_bytes(model) -> int:
    """Bytes of a model's parameters in memory, int8 weights counted at one byte each (with their scales for torchao's
    int8 tensors): the size of a model from `quantize_int8`, which has no safetensors form (the server quantizes the
    fp32 checkpoint at load time)."""
    total = 0
    for parameter in model.parameters():
        parts = [getattr(parameter, name) for name in ("qdata", "scale") if hasattr(parameter, name)] or [parameter]
        total += sum(part.numel() * part.element_size() for part in parts)
    for module in model.modules():  # PyTorch's dynamic int8 linears keep their weights outside parameters()
        packed = getattr(module, "_packed_params", None)
        if packed is not None and hasattr(packed, "_weight_bias"):
            weight, bias = packed._weight_bias()
            total += weight.int_repr().numel() + (0 if bias is None else bias.numel() * bias.element_size())
    return total


def quantize_onnx_int8(onnx_dir, output_dir) -> list[Path]:
    """Writes every `.onnx` file of `onnx_dir` (the towers, the captioner's encoders and decoder step) to
    `output_dir` with ONNX Runtime's dynamic quantization (`quantize_dynamic`: int8 weights of the MatMul and Gemm
    nodes, activations quantized per call); returns the written paths. `mm-serve --backend onnx-int8` runs them."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    root, level = logging.getLogger(), logging.getLogger().level
    root.setLevel(logging.ERROR)  # the quantizer logs a line per tensor it leaves in fp32, on the root logger
    try:
        for path in sorted(Path(onnx_dir).glob("*.onnx")):
            quantize_dynamic(path, output_dir / path.name, weight_type=QuantType.QInt8)
            written.append(output_dir / path.name)
    finally:
        root.setLevel(level)
    return written


def main(argv=None):
    """`mm-export CHECKPOINT [--output_dir DIR]`: writes the ONNX towers and prints their parity with PyTorch."""
    from .runner import CAPTIONER, _architectures
    from modeling_mm import MMModel

    parser = argparse.ArgumentParser(prog="mm-export", description=main.__doc__)
    parser.add_argument("checkpoint", help="an mm checkpoint folder (or Hub id, with --output_dir)")
    parser.add_argument("--output_dir", help="where to write the .onnx files (default: CHECKPOINT/onnx)")
    parser.add_argument(
        "--towers", nargs="+", choices=(*TOWERS, "captioner"),
        help="what to export (default: the three towers, and for a captioner checkpoint its encoders and decoder step)",
    )  # fmt: skip
    parser.add_argument(
        "--int8", action="store_true",
        help="also write the files quantized to int8 by ONNX Runtime to OUTPUT_DIR-int8 (default CHECKPOINT/onnx-int8)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    is_captioner = CAPTIONER in _architectures(args.checkpoint)
    model = (MMForConditionalGeneration if is_captioner else MMModel).from_pretrained(args.checkpoint)
    output_dir = Path(args.output_dir or Path(args.checkpoint) / "onnx")
    towers = args.towers or [*TOWERS, *(["captioner"] if is_captioner else [])]
    if "captioner" in towers and not is_captioner:
        parser.error(f"--towers captioner: {args.checkpoint} is not an MMForConditionalGeneration checkpoint.")
    differences = export_onnx(model, output_dir, [tower for tower in towers if tower != "captioner"])
    for tower, difference in differences.items():
        size = (output_dir / f"{tower}.onnx").stat().st_size / 1e6
        print(f"{tower:>5}: {output_dir / f'{tower}.onnx'} ({size:.1f} MB), max abs diff vs PyTorch {difference:.2e}")
    examples = {modality: example_inputs(model.config, modality) for modality in ("image", "audio")}
    if "captioner" in towers:
        from .export_captioner import STEP_FILE, export_captioner

        # Random media: the check is that ONNX Runtime and PyTorch write the same tokens, not good captions.
        mismatches = export_captioner(model, output_dir, examples)
        size = (output_dir / STEP_FILE).stat().st_size / 1e6
        checked = ", ".join(f"{len(examples[m][next(iter(examples[m]))])} {m}" for m in mismatches)
        print(f"captioner: {output_dir / STEP_FILE} ({size:.1f} MB) and the encoders; greedy captions of {checked} "
              "inputs identical to PyTorch's, token for token")  # fmt: skip
        differences["captioner"] = sum(mismatches.values())
    if args.int8:
        differences.update(_write_int8(model, output_dir, towers, examples))
    return differences


def _write_int8(model, output_dir: Path, towers, examples) -> dict[str, float]:
    """`mm-export --int8`: the int8 files and what they keep of PyTorch's fp32 outputs (printed; nothing is refused,
    since int8 is expected to differ a little): the towers' minimum cosine, the captioner's caption agreement."""
    int8_dir = output_dir.with_name(f"{output_dir.name}-int8")
    quantize_onnx_int8(output_dir, int8_dir)
    kept = {}
    for tower in (tower for tower in towers if tower in TOWERS):
        path = int8_dir / f"{tower}.onnx"
        inputs = example_inputs(model.config, tower, batch=3, length=11)
        kept[f"{tower}-int8"] = onnx_cosine(TowerEmbedding(model, tower).eval(), path, inputs)
        size = path.stat().st_size / 1e6
        print(f"{tower:>5}: {path} ({size:.1f} MB), min cosine vs PyTorch {kept[f'{tower}-int8']:.4f}")
    if "captioner" in towers:
        from .export_captioner import caption_agreement

        for modality, (differing, agreement) in caption_agreement(model, int8_dir, examples).items():
            kept[f"captioner-{modality}-int8"] = agreement
            total = len(next(iter(examples[modality].values())))
            print(f"captioner int8 ({modality}): {total - differing} of {total} greedy captions identical to PyTorch's "
                  f"fp32 ones, {agreement:.1%} of their tokens")  # fmt: skip
    return kept


if __name__ == "__main__":
    main()
