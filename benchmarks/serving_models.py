"""Models for the serving benchmarks: an mm checkpoint of a preset with a tokenizer of the built-in captions, and
a tiny model trained for a few seconds on generated scenes (whose embeddings an approximate index is measured on:
random vectors would misstate its recall), or a tiny captioner trained on them (bench_export.py --captioner)."""

import numpy as np
import torch

from configuration_mm import MMConfig
from modeling_mm import MMForConditionalGeneration, MMModel
from processing_mm import MMFeatureExtractor, MMImageProcessor, MMProcessor, train_tokenizer
from training_mm.synthetic_data import caption_for, draw_scene, sample_scene


def scenes(count, image_size, seed=0):
    """`count` generated scenes as (PIL images, captions)."""
    rng = np.random.default_rng(seed)
    images, captions = [], []
    for _ in range(count):
        scene = sample_scene(rng, held_out=False)
        captions.append(caption_for(scene, rng))
        images.append(draw_scene(scene, rng, image_size))
    return images, captions


def processor_for(config, captions):
    size = config.vision_config.image_size
    return MMProcessor(
        image_processor=MMImageProcessor(size=size, crop_size=size),
        feature_extractor=MMFeatureExtractor(
            feature_size=config.audio_config.num_mel_bins, max_length=2 * config.audio_config.max_source_positions
        ),
        tokenizer=train_tokenizer(
            captions, vocab_size=min(config.text_config.vocab_size, 1000),
            model_max_length=config.text_config.max_position_embeddings,
        ),
    )  # fmt: skip


def save_checkpoint(folder, preset="small", train_steps=0, batch_size=64, seed=0, captioner=False):
    """Writes an `MMModel` of `preset` (trained for `train_steps` contrastive steps on generated scenes, lr 1e-3)
    and its processor to `folder`; with `captioner`, an `MMForConditionalGeneration` trained to caption the scenes'
    images instead. Returns (model, processor)."""
    config = MMConfig.from_preset(preset)
    images, captions = scenes(max(batch_size * 8, 512), config.vision_config.image_size, seed)
    processor = processor_for(config, captions)
    tokenizer = processor.tokenizer
    special = {f"{name}_token_id": getattr(tokenizer, f"{name}_token_id") for name in ("pad", "bos", "eos")}
    torch.manual_seed(seed)
    model_class = MMForConditionalGeneration if captioner else MMModel
    model = model_class(MMConfig.from_preset(preset, text_config={"vocab_size": len(tokenizer), **special}))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(seed)
    for _ in range(train_steps):
        rows = rng.choice(len(images), batch_size, replace=False)
        batch = processor(text=[captions[i] for i in rows], images=[images[i] for i in rows], return_tensors="pt")
        if captioner:  # next-token loss on the caption, padding ignored
            batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
            model(**batch).loss.backward()
        else:
            model(**batch, return_loss=True).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model, processor
