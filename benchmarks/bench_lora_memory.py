"""Optimizer memory of LoRA (ours) against full finetuning (theirs) of MMModel, counted after one real AdamW step.

Both start from the same model (`--preset`, default base) and take one contrastive training step (forward with the
loss over text, image and audio, backward, AdamW) on the same small random batch. AdamW allocates its state
(`exp_avg`, `exp_avg_sq`, `step`) lazily, for every parameter that got a gradient, so the bytes in `optimizer.state`
after the step are what training holds for the optimizer: every parameter for full finetuning; only the LoRA A/B
matrices (default targets: q/k/v/out_proj and fc1/fc2 of all three towers, see training_mm/lora.py) for LoRA.
Also reported: trainable parameters, and their gradients' bytes (which LoRA saves too). The numbers are counts,
not timings, so the device does not change them (except through --dtype: bf16 parameters get bf16 states), and the
timing options every benchmark takes (--iters, --warmup, --compile, --timer) do not apply.

    python benchmarks/bench_lora_memory.py                    # base preset, r = 8 and 16, float32, CPU
    python benchmarks/bench_lora_memory.py --ranks 4 8 64 --preset small
"""

import gc

import torch
from peft import get_peft_model

from bench_contrastive import make_batch
from common import Result, device_label, new_parser, run_script
from configuration_mm import MMConfig
from modeling_mm import MMModel
from training_mm.lora import build_lora_config

TOWERS = ("text", "vision", "audio")
MIB = 2**20


def build_parser():
    parser = new_parser(__doc__.splitlines()[0])
    parser.set_defaults(preset="base")  # the size a user finetunes, on any device
    parser.add_argument("--ranks", type=int, nargs="+", default=[8, 16], help="LoRA ranks to compare (alpha = 2 r).")
    parser.add_argument("--batch-size", type=int, default=2, help="items in the one training step (memory of the "
                        "optimizer state does not depend on it).")  # fmt: skip
    return parser


def make_inputs(config, args):
    """Text and images as bench_contrastive makes them, plus full-length audio, so all three towers train."""
    batch = make_batch(config, args.batch_size, args.device, args.seed)
    audio = config.audio_config
    generator = torch.Generator().manual_seed(args.seed)
    features = torch.randn(args.batch_size, audio.num_mel_bins, 2 * audio.max_source_positions, generator=generator)
    return {**batch, "input_features": features.to(args.device), "return_loss": True}


def optimizer_state_bytes(optimizer):
    """Bytes held in `optimizer.state` (AdamW: `exp_avg`, `exp_avg_sq` and `step` per parameter it has updated)."""
    return sum(
        value.numel() * value.element_size()
        for state in optimizer.state.values()
        for value in state.values()
        if torch.is_tensor(value)
    )


def optimizer_step_memory(model, batch, lr=1e-4):
    """Runs one real AdamW step of `model` on `batch` (the keyword arguments of its forward, with a loss) and returns
    `(optimizer state bytes, trainable parameter bytes)`. AdamW creates its state lazily, for the parameters that got
    a gradient, so this counts what training actually holds, not an estimate from parameter counts."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=lr)
    model.train()
    loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return optimizer_state_bytes(optimizer), sum(p.numel() * p.element_size() for p in parameters)


def measure(args, config, batch, rank=None):
    """(optimizer state bytes, trainable parameter bytes, trainable parameters) of one AdamW step; LoRA at `rank`."""
    torch.manual_seed(args.seed)
    model = MMModel(config).to(args.device, getattr(torch, args.dtype))
    if rank is None:
        trainable = model.num_parameters(only_trainable=True)
    else:
        model = get_peft_model(model, build_lora_config(model, TOWERS, r=rank, alpha=2 * rank, dropout=0.0))
        trainable, _ = model.get_nb_trainable_parameters()
    state_bytes, parameter_bytes = optimizer_step_memory(model, batch)
    del model
    gc.collect()
    return state_bytes, parameter_bytes, trainable


def run(args):
    device = device_label(args)
    config = MMConfig.from_preset(args.preset, attn_implementation=args.attn)
    batch = make_inputs(config, args)
    full_state, full_params, full_trainable = measure(args, config, batch)
    tag = f"{args.preset} {args.dtype}"
    results = []
    for rank in args.ranks:
        state, params, trainable = measure(args, config, batch, rank)
        results += [
            Result(f"AdamW state, LoRA r={rank} vs full, {tag}", state / MIB, full_state / MIB, "MiB", device),
            Result(f"gradients, LoRA r={rank} vs full, {tag}", params / MIB, full_params / MIB, "MiB", device),
            Result(f"trainable params, LoRA r={rank} vs full, {tag}", trainable / 1e6, full_trainable / 1e6, "M", device),
        ]
    return results


def main(argv=None):
    results = run_script(
        build_parser,
        run,
        lambda args: f"LoRA vs full finetuning of MMModel ({args.preset}): memory after one AdamW step, "
        f"towers {'+'.join(TOWERS)}, seed={args.seed}",
        argv,
    )
    for result in results:
        if result.name.startswith("AdamW state"):
            saved = result.theirs - result.ours
            print(f"{result.name.split(',')[1].strip()}: LoRA saves {saved:,.1f} MiB of AdamW state "
                  f"({100 * saved / result.theirs:.2f}% of full finetuning's {result.theirs:,.1f} MiB)")  # fmt: skip
    return results


if __name__ == "__main__":
    main()
