#!/usr/bin/env python
"""Text-to-image training with diffusers on mm's text tower: a pixel-space `UNet2DConditionModel` learns to denoise
images while cross-attending to the token states of a frozen mm text tower, with classifier-free guidance; the
result is a diffusers `MMTextToImagePipeline` folder that loads with `DiffusionPipeline.from_pretrained(folder,
trust_remote_code=True)`.

With no arguments it uses the contrastive checkpoint `outputs/run_clip-small` (trained first by run_clip.py when the
folder does not exist) as the frozen text tower and as the judge, trains on the built-in data's 32 px images, and
prints, for single-object scenes of the held-out test split (colour-shape pairs never seen in training), the judge's
zero-shot colour and shape accuracy and FID/KID of the generated images by guidance scale, next to real images and
noise; it saves the pipeline and a sample grid (samples.png) to outputs/run_text_to_image:

    python examples/run_text_to_image.py
    python examples/run_text_to_image.py --text_model_name_or_path fresh        # an untrained text tower
    python examples/run_text_to_image.py --dataset_name my_photos/ --caption_column text

The training loop is accelerate's (`accelerate launch` works), as in diffusers' train_text_to_image.py; the loss is
`modeling_mm.pipeline_mm_text_to_image.diffusion_loss`. `main(argv)` is importable and returns the measured metrics.
"""

import json
import logging
import math
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import torch
from accelerate import Accelerator
from diffusers import DDPMScheduler
from diffusers.optimization import get_cosine_schedule_with_warmup
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import HfArgumentParser, set_seed

from configuration_mm import MMConfig
from modeling_mm import MMModel, MMTextModel
from modeling_mm.pipeline_mm_text_to_image import MMTextToImagePipeline, build_text_to_image_unet, diffusion_loss
from training_mm.default_checkpoint import ensure_checkpoint
from training_mm.output_folder import check_output_dir
from training_mm.processors import load_processor, new_processor
from training_mm.script_arguments import DataArguments, GenerationArguments
from training_mm.splits import load_splits
from training_mm.text_to_image import (
    ImageCaptionCollator,
    JudgeImageFeatures,
    fid_kid,
    image_grid,
    noise_images,
    single_object_rows,
    zero_shot_colour_shape,
)

logger = logging.getLogger("run_text_to_image")


@dataclass
class ModelArguments(GenerationArguments):
    """The UNet conditioned on the (frozen) text tower of `--text_model_name_or_path`, or on an untrained `small`
    tower with `fresh`."""

    image_size: int = field(default=32, metadata={"help": "Side of the generated images, in pixels."})
    unet_channels: str = field(default="32,64,64", metadata={"help": "UNet channels per resolution level."})
    num_eval_prompts: int = field(default=96, metadata={"help": "Held-out single-object captions generated."})


@dataclass
class TextToImageArguments:
    output_dir: str = field(default="outputs/run_text_to_image", metadata={"help": "Where the pipeline is saved."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Write into a non-empty --output_dir."})
    seed: int = 0
    learning_rate: float = 1e-3
    per_device_train_batch_size: int = 64
    num_train_epochs: float = 7.0  # 329 steps of 64: ~15 min on 2 idle CPU cores
    max_steps: int = field(default=-1, metadata={"help": "Optimizer steps; overrides --num_train_epochs if > 0."})
    warmup_steps: int = 50
    drop_prompt_probability: float = field(
        default=0.1, metadata={"help": "Share of captions replaced by '' in training (classifier-free guidance)."}
    )
    num_inference_steps: int = field(default=25, metadata={"help": "Sampling steps (DDPM, ancestral) when evaluating."})
    guidance_scales: str = field(default="1,3,7", metadata={"help": "Guidance scales evaluated, comma-separated."})
    logging_steps: int = 20
    report_to: str = field(
        default="none",
        metadata={"help": "`tensorboard`: log the training loss and learning rate to <output_dir>/runs (accelerate's "
                          "tracker), as --report_to tensorboard does in the Trainer examples."},
    )


def main(argv=None):
    """Runs the script with `argv` (default: sys.argv[1:]); returns the measured metrics as a flat dict."""
    # 1. Arguments.
    parser = HfArgumentParser((ModelArguments, DataArguments, TextToImageArguments))
    model_args, data_args, args = parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False)
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    output_dir = Path(args.output_dir)
    check_output_dir(output_dir, args.overwrite_output_dir, None)
    log_with = None if args.report_to == "none" else args.report_to
    accelerator = Accelerator(log_with=log_with, project_dir=str(output_dir / "runs"))
    accelerator.init_trackers("run_text_to_image", config={"learning_rate": args.learning_rate, "seed": args.seed})
    set_seed(args.seed)

    # 2. The text tower, its tokenizer and the judge.
    text_model, processor = load_text_tower(model_args, data_args)
    judge_path = ensure_checkpoint(model_args.judge_path(), data_args)
    judge = MMModel.from_pretrained(judge_path).eval()
    judge_processor = load_processor(judge_path, judge.config)

    # 3. Data: the judge's image size, so the built-in data is the one run_clip.py cached.
    judge_size = judge.config.vision_config.image_size
    splits, dataset_name, _ = load_splits(data_args, _Args(), judge_size)
    loader = DataLoader(
        splits["train"],
        batch_size=args.per_device_train_batch_size,
        shuffle=True,
        collate_fn=ImageCaptionCollator(model_args.image_size),
        generator=torch.Generator().manual_seed(args.seed),
    )

    # 4. The pipeline: a new UNet, a DDPM scheduler (cosine noise schedule), the frozen text tower. DDPM's ancestral
    # sampling, not DDIM's deterministic one, because at 25 steps the briefly trained UNet's images from DDIM (and
    # DPM-Solver++) keep visible noise, from DDPM they are clean shapes of the asked colour (docs/design.md).
    unet = build_text_to_image_unet(
        text_model.config.hidden_size, model_args.image_size, [int(c) for c in model_args.unet_channels.split(",")]
    )
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    text_model.requires_grad_(False).eval()
    pipe = MMTextToImagePipeline(unet=unet, scheduler=scheduler, text_encoder=text_model, tokenizer=processor.tokenizer)
    pipe.set_progress_bar_config(disable=True)
    logger.info("UNet: %.2fM parameters; text tower (frozen): %.2fM", _millions(unet), _millions(text_model))

    # 5. Training.
    steps = args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * len(loader))
    optimizer = torch.optim.AdamW(unet.parameters(), lr=args.learning_rate, weight_decay=0.01)
    lr_scheduler = get_cosine_schedule_with_warmup(optimizer, min(args.warmup_steps, steps // 10), steps)
    unet, optimizer, loader, lr_scheduler = accelerator.prepare(unet, optimizer, loader, lr_scheduler)
    text_model.to(accelerator.device)
    losses = train(pipe, unet, optimizer, lr_scheduler, loader, steps, args, accelerator)
    pipe.unet = accelerator.unwrap_model(unet).eval()

    # 6. Measurement on held-out single-object scenes, 7. the pipeline folder and the sample grid.
    metrics = {"train_loss_first": losses[0], "train_loss_last": sum(losses[-20:]) / len(losses[-20:])}
    if accelerator.is_main_process:
        held_out = "test" if "test" in splits else "validation"
        measured, images = evaluate(pipe, judge, judge_processor, splits, held_out, model_args, args)
        metrics.update(measured)
        print(format_report(measured, held_out, dataset_name, args, model_args.num_eval_prompts))
        pipe.save_pretrained(output_dir)
        columns = 1 + len(args.guidance_scales.split(","))  # real, then one per guidance scale
        image_grid(images, columns=columns).save(output_dir / "samples.png")
        (output_dir / "all_results.json").write_text(json.dumps(metrics, indent=2) + "\n")
        logger.info("Saved the pipeline, samples.png and all_results.json to %s", output_dir)
    return metrics


class _Args:
    """What load_splits needs of TrainingArguments: one process here builds the data."""

    @staticmethod
    def main_process_first(desc=""):
        from contextlib import nullcontext

        return nullcontext()


def _millions(module):
    return sum(p.numel() for p in module.parameters()) / 1e6


def load_text_tower(model_args, data_args):
    """The frozen text tower and a processor holding its tokenizer: a checkpoint's, or a fresh `small` tower with a
    tokenizer trained on the training captions."""
    path = model_args.text_model_name_or_path
    if path != "fresh":
        path = ensure_checkpoint(path, data_args)
        model = MMModel.from_pretrained(path)
        return model.text_model, load_processor(path, model.config)
    config = MMConfig.from_preset("small")
    splits, _, _ = load_splits(data_args, _Args(), config.vision_config.image_size)
    towers = {"text": config.text_config, "vision": config.vision_config, "audio": config.audio_config}
    processor = new_processor(towers, splits["train"])
    tokenizer = processor.tokenizer
    config.text_config.vocab_size = len(tokenizer)
    return MMTextModel(config.text_config), processor


def train(pipe, unet, optimizer, lr_scheduler, loader, steps, args, accelerator):
    """Denoising steps until `steps`; returns the loss of every step."""
    losses = []
    unet.train()
    generator = torch.Generator().manual_seed(args.seed)
    progress = tqdm(total=steps, desc="Training the UNet", disable=not accelerator.is_local_main_process)
    while len(losses) < steps:
        for batch in loader:
            with accelerator.accumulate(unet):
                pipe.unet = unet
                loss = diffusion_loss(
                    pipe, batch["pixel_values"], batch["prompts"], args.drop_prompt_probability, generator
                )
                accelerator.backward(loss)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            losses.append(loss.item())
            progress.update(1)
            if len(losses) % args.logging_steps == 0:
                mean = sum(losses[-args.logging_steps:]) / args.logging_steps
                progress.set_postfix(loss=f"{mean:.4f}")
                accelerator.log({"train/loss": mean, "train/learning_rate": lr_scheduler.get_last_lr()[0]}, step=len(losses))
            if len(losses) >= steps:
                break
    progress.close()
    accelerator.end_training()
    return losses


@torch.no_grad()
def evaluate(pipe, judge, judge_processor, splits, held_out, model_args, args):
    """The judge's zero-shot accuracy and FID/KID for each guidance scale, real images and noise; and the images of
    the sample grid (the first 8 prompts: real, then one column per guidance scale)."""
    def fits(row):  # captions the text tower reads whole (a longer prompt is refused by the pipeline)
        return len(pipe.tokenizer(row["caption"])["input_ids"]) <= pipe.max_prompt_tokens

    rows = list(islice(filter(fits, single_object_rows(splits[held_out])), model_args.num_eval_prompts))
    if not rows:
        raise ValueError(f"The {held_out} split has no single-object scenes (label 'small|large colour shape ...').")
    size = model_args.image_size
    prompts = [row["caption"] for row in rows]
    colours, shapes = [row["colour"] for row in rows], [row["shape"] for row in rows]
    real = [row["image"].convert("RGB").resize((size, size)) for row in rows]
    # The real-image row's FID compares other real scenes (validation) with the test ones: the floor FID can reach.
    other_split = "validation" if held_out == "test" and "validation" in splits else held_out
    other_real = [row["image"].convert("RGB").resize((size, size)) for row in single_object_rows(splits[other_split])]
    features = JudgeImageFeatures(judge, judge_processor.image_processor)

    metrics, grid_columns = {}, [real[:8]]
    candidates = {"real": (real, other_real[: len(real)]), "noise": (noise_images(len(rows), size),) * 2}
    for name, (judged, compared) in candidates.items():
        metrics.update(_scores(name, judge, judge_processor, features, judged, compared, real, colours, shapes))
    for scale in [float(s) for s in args.guidance_scales.split(",")]:
        images = []
        for start in tqdm(range(0, len(prompts), 32), desc=f"Generating (guidance {scale:g})"):
            generator = torch.Generator().manual_seed(args.seed + start)
            images += pipe(
                prompts[start : start + 32],
                num_inference_steps=args.num_inference_steps,
                guidance_scale=scale,
                generator=generator,
            ).images
        name = f"guidance {scale:g}"
        metrics.update(_scores(name, judge, judge_processor, features, images, images, real, colours, shapes))
        grid_columns.append(images[:8])
    grid = [column[i] for i in range(8) for column in grid_columns if i < len(column)]
    return metrics, grid


def _scores(name, judge, judge_processor, features, judged, compared, real, colours, shapes):
    scores = zero_shot_colour_shape(judge, judge_processor, judged, colours, shapes)
    scores.update(fid_kid(features, compared, real))
    return {f"{name} {key}": value for key, value in scores.items()}


def format_report(metrics, split, dataset_name, args, num_prompts):
    order = ["real", "noise"] + [f"guidance {float(s):g}" for s in args.guidance_scales.split(",")]
    lines = [
        f"{num_prompts} (at most) single-object scenes of {dataset_name!r} {split}, "
        f"{args.num_inference_steps} DDPM steps; judge: zero-shot over 36 'a {{colour}} {{shape}}' captions; FID/KID "
        "on the judge's image embeddings (not Inception: not comparable to published FID):",
        f"{'images':<14}{'colour acc':>12}{'shape acc':>12}{'both':>8}{'FID':>10}{'KID':>10}",
    ]
    for name in order:
        if f"{name} fid" not in metrics:
            continue
        lines.append(
            f"{name:<14}{metrics[f'{name} colour accuracy']:>12.3f}{metrics[f'{name} shape accuracy']:>12.3f}"
            f"{metrics[f'{name} colour+shape accuracy']:>8.3f}{metrics[f'{name} fid']:>10.4f}"
            f"{metrics[f'{name} kid']:>10.4f}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
