"""Training and scoring of the text-to-image pipeline (examples/run_text_to_image.py): image batches for the UNet,
and how a trained mm contrastive model judges generated images (zero-shot colour and shape, FID and KID on its own
image features).

FID and KID here use the judge's image embeddings (torchmetrics with a custom feature extractor), not Inception-v3,
whose weights would have to be downloaded: the figures compare runs of this project with each other and are not
comparable to published FID.
"""

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from .synthetic_data import COLOURS, SHAPES


class ImageCaptionCollator:
    """Rows with `image` and `caption` -> `{"pixel_values": (B, 3, size, size) in [-1, 1], "prompts": [str]}`."""

    def __init__(self, image_size):
        self.image_size = image_size

    def __call__(self, rows):
        return {
            "pixel_values": torch.stack([to_pixels(row["image"], self.image_size) for row in rows]),
            "prompts": [row["caption"] for row in rows],
        }


def to_pixels(image, size):
    """A PIL image -> (3, size, size) float tensor in [-1, 1] (bicubic resize, RGB)."""
    image = image.convert("RGB").resize((size, size), Image.BICUBIC)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)


def single_object_rows(split):
    """The rows of `split` that show one object (built-in data: labels "small|large colour shape where"), with the
    object's colour and shape: the scenes whose colour and shape a judge can be asked about unambiguously."""
    rows = []
    for row in split:
        words = row["label"].split()
        if words[0] in ("small", "large") and words[1] in COLOURS and words[2] in SHAPES:
            rows.append({**row, "colour": words[1], "shape": words[2]})
    return rows


class JudgeImageFeatures(nn.Module):
    """uint8 images (B, 3, H, W) -> the judge's L2-normalised image embeddings (B, D): the feature extractor
    torchmetrics' FID and KID are given in place of Inception-v3."""

    def __init__(self, judge, image_processor):
        super().__init__()
        self.judge = judge
        self.size = image_processor.crop_size["height"] if isinstance(image_processor.crop_size, dict) else 224
        self.register_buffer("mean", torch.tensor(image_processor.image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(image_processor.image_std).view(1, 3, 1, 1), persistent=False)
        self.num_features = judge.config.projection_dim

    @torch.no_grad()
    def forward(self, images):
        pixels = F.interpolate(images.float() / 255.0, size=(self.size, self.size), mode="bicubic", align_corners=False)
        pixels = (pixels.clamp(0, 1) - self.mean) / self.std
        features = self.judge.get_image_features(pixel_values=pixels.to(self.judge.dtype))
        features = getattr(features, "pooler_output", features)
        return F.normalize(features.float(), dim=-1)


def as_uint8(images):
    """PIL images -> (B, 3, H, W) uint8 tensor."""
    return torch.stack([torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1) for image in images])


def fid_kid(features, generated, real, kid_subset_size=50):
    """FID and KID (mean) between two lists of PIL images of one size, on `features` (a `JudgeImageFeatures`)."""
    fid = FrechetInceptionDistance(feature=features, normalize=False)
    subset_size = min(kid_subset_size, len(generated), len(real))
    kid = KernelInceptionDistance(feature=features, normalize=False, subset_size=subset_size)
    for metric in (fid, kid):
        metric.update(as_uint8(real), real=True)
        metric.update(as_uint8(generated), real=False)
    return {"fid": float(fid.compute()), "kid": float(kid.compute()[0])}


@torch.no_grad()
def zero_shot_colour_shape(judge, processor, images, colours, shapes, batch_size=64):
    """The judge's zero-shot reading of each image: the (colour, shape) whose caption "a {colour} {shape}" its image
    embedding is closest to. Returns the accuracy of colour, of shape and of both against `colours`/`shapes`."""
    pairs = [(colour, shape) for colour in COLOURS for shape in SHAPES]
    text = processor(text=[f"a {colour} {shape}" for colour, shape in pairs], padding=True, return_tensors="pt")
    text_embeds = F.normalize(
        _pooled(judge.get_text_features(input_ids=text["input_ids"], attention_mask=text["attention_mask"])), dim=-1
    )
    predictions = []
    for start in range(0, len(images), batch_size):
        pixels = processor(images=images[start : start + batch_size], return_tensors="pt")["pixel_values"]
        image_embeds = F.normalize(_pooled(judge.get_image_features(pixel_values=pixels.to(judge.dtype))), dim=-1)
        predictions += [pairs[i] for i in (image_embeds.float() @ text_embeds.float().t()).argmax(dim=1).tolist()]
    colour_hits = [p[0] == c for p, c in zip(predictions, colours)]
    shape_hits = [p[1] == s for p, s in zip(predictions, shapes)]
    return {
        "colour accuracy": float(np.mean(colour_hits)),
        "shape accuracy": float(np.mean(shape_hits)),
        "colour+shape accuracy": float(np.mean([a and b for a, b in zip(colour_hits, shape_hits)])),
    }


def _pooled(features):
    return getattr(features, "pooler_output", features)


def noise_images(count, size, seed=0):
    """Uniform-noise RGB images: the floor any judge score of generated images is read against."""
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(count)]


def image_grid(images, columns):
    """The images tiled `columns` wide, row by row, in one PIL image."""
    width, height = images[0].size
    rows = -(-len(images) // columns)
    grid = Image.new("RGB", (columns * width, rows * height))
    for index, image in enumerate(images):
        grid.paste(image, ((index % columns) * width, (index // columns) * height))
    return grid
