"""MMForConditionalGeneration against transformers' VisionEncoderDecoderModel (ViT + GPT-2) at matched sizes.

The ViT matches our vision tower (image and patch size, width, depth, heads, MLP) and GPT-2 our caption decoder
(width, depth, heads, MLP, vocabulary, activation), with cross-attention in every decoder layer on both sides.
Both caption the same random images with greedy `generate(max_new_tokens=32, min_new_tokens=32)` and no
end-of-sequence token, so each writes exactly 32 tokens per image; tokens/s = batch * 32 / seconds per call,
image encoding included. Both use a dynamic KV cache; with `--compile` on CUDA ours also runs with
`cache_implementation="static"`, which makes `generate` compile the decoding step (CUDA graphs).

    python benchmarks/bench_generation.py                       # CPU: small preset, float32
    python benchmarks/bench_generation.py --device cuda --compile
"""

import torch
from transformers import GPT2Config, ViTConfig, VisionEncoderDecoderConfig, VisionEncoderDecoderModel

from common import Result, device_label, model_settings, model_tag, new_parser, run_script, time_pair
from configuration_mm import MMConfig
from modeling_mm import MMForConditionalGeneration

NEW_TOKENS = 32


def build_parser():
    parser = new_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--batch-sizes", type=int, nargs="+", default=None, help="images per generate() (default: 1 64; quick: 1 16)."
    )
    return parser


def matched_vision_encoder_decoder_config(config, attn):
    """ViT + GPT-2 with the sizes of `config`'s vision tower and caption decoder (an MMConfig)."""
    vision, decoder = config.vision_config, config.decoder_config
    encoder_config = ViTConfig(
        image_size=vision.image_size,
        patch_size=vision.patch_size,
        hidden_size=vision.hidden_size,
        intermediate_size=vision.intermediate_size,
        num_hidden_layers=vision.num_hidden_layers,
        num_attention_heads=vision.num_attention_heads,
        hidden_act=vision.hidden_act,
        layer_norm_eps=vision.layer_norm_eps,
        attn_implementation=attn,
    )
    decoder_config = GPT2Config(
        vocab_size=decoder.vocab_size,
        n_positions=max(decoder.max_position_embeddings, NEW_TOKENS + 1),
        n_embd=decoder.hidden_size,
        n_layer=decoder.num_hidden_layers,
        n_head=decoder.num_attention_heads,
        n_inner=decoder.intermediate_size,
        activation_function=decoder.hidden_act,
        layer_norm_epsilon=decoder.layer_norm_eps,
        bos_token_id=decoder.bos_token_id,
        eos_token_id=decoder.eos_token_id,
        pad_token_id=decoder.pad_token_id,
        is_decoder=True,
        add_cross_attention=True,
        attn_implementation=attn,
    )
    ved_config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder_config, decoder_config)
    ved_config.decoder_start_token_id = decoder.bos_token_id
    ved_config.pad_token_id = decoder.pad_token_id
    return ved_config


def build_models(args):
    dtype = getattr(torch, args.dtype)
    config = MMConfig.from_preset(args.preset, attn_implementation=args.attn)
    torch.manual_seed(args.seed)
    ours = MMForConditionalGeneration(config)
    torch.manual_seed(args.seed)
    theirs = VisionEncoderDecoderModel(config=matched_vision_encoder_decoder_config(config, args.attn))
    for model in (ours, theirs):
        model.to(args.device, dtype).eval()
        # No end-of-sequence: every row writes exactly NEW_TOKENS tokens, whatever the (random) weights say.
        model.generation_config.eos_token_id = None
        model.generation_config.pad_token_id = config.decoder_config.pad_token_id
        model.generation_config.max_length = None
    return config, ours, theirs


def generate_fn(model, pixel_values, **kwargs):
    def call():
        with torch.inference_mode():
            return model.generate(
                pixel_values=pixel_values,
                max_new_tokens=NEW_TOKENS,
                min_new_tokens=NEW_TOKENS,
                do_sample=False,
                **kwargs,
            )

    return call


def run(args):
    device = device_label(args)
    batch_sizes = args.batch_sizes or ((1, 16) if args.quick else (1, 64))
    if args.compile and args.device != "cuda":  # `generate` compiles its step on accelerators only
        note = "n/a (compiled generate is CUDA-only)"
        return [Result(f"generate {model_tag(args, b)}", None, None, "tokens/s", device, note) for b in batch_sizes]
    static = args.compile
    config, ours, theirs = build_models(args)
    size = config.vision_config.image_size
    dtype = getattr(torch, args.dtype)
    results = []
    for batch_size in batch_sizes:
        generator = torch.Generator().manual_seed(args.seed)
        pixel_values = torch.randn(batch_size, 3, size, size, generator=generator).to(args.device, dtype)
        run_ours = generate_fn(ours, pixel_values, **({"cache_implementation": "static"} if static else {}))
        run_theirs = generate_fn(theirs, pixel_values)
        for name, fn in (("ours", run_ours), ("theirs", run_theirs)):  # the first warm-up call, checked
            new_tokens = fn().shape[1] - 1  # both start from one <s> token
            if new_tokens != NEW_TOKENS:
                raise RuntimeError(f"{name} generated {new_tokens} tokens, expected {NEW_TOKENS}.")
        warmup = max(0, args.warmup - 1)
        t_ours, t_theirs = time_pair(run_ours, run_theirs, args, warmup)
        cache = "static+compiled" if static else "dynamic"
        tokens = batch_size * NEW_TOKENS
        name = f"generate {model_tag(args, batch_size)} (ours: {cache} cache)"
        results.append(Result(name, tokens / t_ours, tokens / t_theirs, "tokens/s", device))
    return results


def title(args):
    return f"MMForConditionalGeneration vs VisionEncoderDecoderModel (ViT + GPT-2), {model_settings(args)}"


def main(argv=None):
    return run_script(build_parser, run, title, argv)


if __name__ == "__main__":
    main()
