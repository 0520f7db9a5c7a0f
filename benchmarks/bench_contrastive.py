"""MMModel (image + text) against transformers' CLIPModel at matched sizes.

Both models get the same widths, depths, heads, MLP sizes, patch and image size, vocabulary and text length (our
preset's), the same attn_implementation, dtype, batch, optimizer (AdamW) and inputs: captions of random length
padded to the longest (so both build a padding mask) and random images. Our audio tower is built but never
runs: no audio goes in, and its parameters get no gradient, so AdamW skips them.

Measured: training steps (forward with the contrastive loss, backward, AdamW step) in pairs/s; inference
embeddings (forward, no grad) in pairs/s; on CUDA also MFU (FLOPs from torch's FlopCounterMode over one training
step, divided by the step time and the GPU's peak) and the peak memory of training at batch 64 with gradient
checkpointing.

    python benchmarks/bench_contrastive.py                          # CPU: small preset, float32
    python benchmarks/bench_contrastive.py --device cuda            # GPU: base preset, bf16
    python benchmarks/bench_contrastive.py --device cuda --compile
"""

import contextlib
import gc

import torch
from transformers import CLIPConfig, CLIPModel

from common import (
    Result,
    count_flops,
    device_label,
    model_settings,
    model_tag,
    new_parser,
    peak_flops,
    run_script,
    synchronize,
    time_pair,
)
from configuration_mm import MMConfig
from modeling_mm import MMModel


def build_parser():
    parser = new_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--batch-size", type=int, default=None, help="training and inference batch (default: 256 on CUDA, 32 on CPU)."
    )
    parser.add_argument("--memory-batch-size", type=int, default=64, help="batch of the CUDA peak-memory measurement.")
    return parser


def matched_clip_config(config, attn):
    """A CLIPConfig with the text and vision towers of `config` (an MMConfig): same sizes, activation, eps."""
    def tower(sub, **extra):
        return dict(
            hidden_size=sub.hidden_size,
            intermediate_size=sub.intermediate_size,
            num_hidden_layers=sub.num_hidden_layers,
            num_attention_heads=sub.num_attention_heads,
            hidden_act=sub.hidden_act,
            layer_norm_eps=sub.layer_norm_eps,
            projection_dim=config.projection_dim,
            **extra,
        )

    text, vision = config.text_config, config.vision_config
    return CLIPConfig(
        text_config=tower(
            text,
            vocab_size=text.vocab_size,
            max_position_embeddings=text.max_position_embeddings,
            pad_token_id=text.pad_token_id,
            bos_token_id=text.bos_token_id,
            eos_token_id=text.eos_token_id,
        ),
        vision_config=tower(vision, image_size=vision.image_size, patch_size=vision.patch_size),
        projection_dim=config.projection_dim,
        attn_implementation=attn,
    )


def build_ours(config, args):
    torch.manual_seed(args.seed)
    return MMModel(config).to(args.device)


def build_theirs(config, args):
    torch.manual_seed(args.seed)
    return CLIPModel(matched_clip_config(config, args.attn)).to(args.device)


def make_batch(config, batch_size, device, seed):
    """Captions of 50-100% of the maximum length, padded to the longest (a collator's output), and images."""
    generator = torch.Generator().manual_seed(seed)
    text = config.text_config
    length = text.max_position_embeddings
    input_ids = torch.randint(3, text.vocab_size, (batch_size, length), generator=generator)
    lengths = torch.randint(length // 2, length + 1, (batch_size,), generator=generator)
    lengths[0] = length
    attention_mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    input_ids[:, 0] = text.bos_token_id
    input_ids[torch.arange(batch_size), lengths - 1] = text.eos_token_id  # CLIP pools at the eos token
    input_ids = input_ids * attention_mask + text.pad_token_id * (1 - attention_mask)
    image = config.vision_config.image_size
    pixel_values = torch.randn(batch_size, 3, image, image, generator=generator)
    batch = dict(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values)
    return {key: value.to(device) for key, value in batch.items()}


def autocast(args):
    dtype = getattr(torch, args.dtype)
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=args.device, dtype=dtype)


def train_step(model, optimizer, batch, args):
    """One step as HF Trainer does it with bf16=True: autocast forward + loss, backward, AdamW on fp32 weights."""
    def step():
        with autocast(args):
            loss = model(**batch, return_loss=True).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def embed_step(model, batch, args):
    def step():
        with torch.inference_mode(), autocast(args):
            out = model(**batch)
        return out.image_embeds, out.text_embeds

    return step


def peak_training_memory(build, config, args):
    """Peak GPU memory (GB) of two training steps of a fresh model with gradient checkpointing: weights, gradients,
    AdamW states and activations, i.e. max_memory_allocated minus what was allocated before the model was built."""
    torch._dynamo.reset()  # compiled graphs of the throughput runs hold on to their models' tensors
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    model = build(config, args).train()
    model.gradient_checkpointing_enable()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = make_batch(config, args.memory_batch_size, args.device, args.seed)
    step = train_step(model, optimizer, batch, args)
    for _ in range(2):  # the second step runs with AdamW's states allocated
        step()
    synchronize(args.device)
    peak = (torch.cuda.max_memory_allocated() - before) / 1e9
    del model, optimizer, batch, step
    return peak


def run(args):
    device = device_label(args)
    batch_size = args.batch_size or (256 if args.device == "cuda" else (8 if args.quick else 32))
    config = MMConfig.from_preset(args.preset, attn_implementation=args.attn)
    ours, theirs = build_ours(config, args), build_theirs(config, args)
    batch = make_batch(config, batch_size, args.device, args.seed)
    tag = model_tag(args, batch_size)
    # Sizes match where it counts: the parameters an image + text step uses (ours without its audio tower).
    unused = sum(p.numel() for m in (ours.audio_model, ours.audio_projection) for p in m.parameters())
    used = [(sum(p.numel() for p in m.parameters()) - skip) / 1e6 for m, skip in ((ours, unused), (theirs, 0))]
    results = [Result(f"parameters (image + text) {args.preset}", *used, "M", device)]

    ours.train()
    theirs.train()
    run_ours = torch.compile(ours) if args.compile else ours
    run_theirs = torch.compile(theirs) if args.compile else theirs
    optimizers = [torch.optim.AdamW(m.parameters(), lr=1e-4) for m in (ours, theirs)]
    steps = [train_step(m, opt, batch, args) for m, opt in zip((run_ours, run_theirs), optimizers)]
    t_ours, t_theirs = time_pair(*steps, args)
    results.append(Result(f"train {tag}", batch_size / t_ours, batch_size / t_theirs, "pairs/s", device))

    peak, peak_note = peak_flops(args.device, getattr(torch, args.dtype))
    if peak is None:
        results.append(Result(f"train MFU {tag}", None, None, "%", device, note=peak_note))
    else:  # FLOPs of the uncompiled model: the same arithmetic, and the counter sees every aten op
        flops = [count_flops(train_step(m, opt, batch, args)) for m, opt in zip((ours, theirs), optimizers)]
        mfu = [100 * f / t / peak for f, t in zip(flops, (t_ours, t_theirs))]
        results.append(Result(f"train MFU {tag} ({peak_note})", *mfu, "%", device))
        per_pair = [f / batch_size / 1e9 for f in flops]
        results.append(Result(f"train FLOPs/pair {tag}", *per_pair, "GFLOP", device))

    ours.eval()
    theirs.eval()
    embeds = [embed_step(m, batch, args) for m in (run_ours, run_theirs)]
    t_ours, t_theirs = time_pair(*embeds, args)
    results.append(Result(f"embed {tag}", batch_size / t_ours, batch_size / t_theirs, "pairs/s", device))

    del ours, theirs, run_ours, run_theirs, optimizers, steps, embeds, batch
    if args.compile:  # the memory measurement runs uncompiled: it belongs to the uncompiled pass
        return results
    name = f"train peak memory {model_tag(args, args.memory_batch_size)} grad-ckpt"
    if args.device == "cuda":
        memory = [peak_training_memory(build, config, args) for build in (build_ours, build_theirs)]
        results.append(Result(name, *memory, "GB", device))
    else:
        results.append(Result(name, None, None, "GB", device, note="n/a (no GPU)"))
    return results


def title(args):
    return f"MMModel vs CLIPModel (image + text), {model_settings(args)}"


def main(argv=None):
    return run_script(build_parser, run, title, argv)


if __name__ == "__main__":
    main()
