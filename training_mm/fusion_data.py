"""The built-in fusion tasks: the built-in scenes (`synthetic_data`) with a caption that describes the image or, half
of the time, differs from it in one attribute, and labels that need more than one modality to predict: `match`
(does the caption, written or spoken, describe the image?), `colours` (multi-label: the colours in the image or the
caption) and `count` (regression: how many objects the image shows). Cached like the built-in data."""

import io
import logging
from functools import partial

import numpy as np
from datasets import Audio, Features, Image, Sequence, Value

from .synthetic_data import (
    COLOURS,
    NUMBERS,
    POSITIONS,
    SHAPES,
    SPLITS,
    Scene,
    audio_possible,
    build_cached,
    build_rows,
    caption_for,
    choose,
    draw_scene,
    sample_scene,
    spoken,
)

logger = logging.getLogger(__name__)

FUSION_GENERATOR_VERSION = 2  # part of the fusion data's cache key: bump it whenever those rows change
# The built-in fusion tasks: their label columns and transformers' problem types.
FUSION_TASKS = {
    "match": "single_label_classification",  # does the caption (text or spoken) describe the image?
    "colours": "multi_label_classification",  # which colours appear in the image or the caption
    "count": "regression",  # how many objects the image shows
}
# What a non-matching caption gets wrong: the colour of one object. Colour is what a small model trained from scratch
# learns to see in a few hundred steps; negatives differing in shape, size, position, relation or count as well kept
# every fusion type at chance on 2 CPU cores (docs/design.md, "Fusion").
FUSION_NEGATIVE_CHANGES = ("colour",)


def perturb_scene(scene, rng, changes=None):
    """The same scene with exactly one attribute changed (a colour, a shape, the size, the position, the relation
    or the count; `changes` limits which): what a caption that almost describes the image says.

    >>> scene = Scene("count", (("red", "star"),), count=3)
    >>> perturb_scene(scene, np.random.default_rng(0)).label != scene.label
    True
    """
    options = ["colour", "shape", *{"single": ["size", "position"], "relation": ["relation"], "count": ["count"]}[scene.kind]]
    options = [option for option in options if changes is None or option in changes]
    while True:
        objects = list(scene.objects)
        change = choose(rng, options)
        fields = {}
        if change in ("colour", "shape"):
            which = int(rng.integers(len(objects)))
            colour, shape = objects[which]
            if change == "colour":
                objects[which] = (choose(rng, [c for c in COLOURS if c != colour]), shape)
            else:
                objects[which] = (colour, choose(rng, [s for s in SHAPES if s != shape]))
        elif change == "size":
            fields["size"] = "small" if scene.size == "large" else "large"
        elif change == "position":
            fields["position"] = choose(rng, [p for p in POSITIONS if p != scene.position])
        elif change == "relation":
            objects = objects[::-1]  # "A left of B" becomes "B left of A"
        else:
            fields["count"] = choose(rng, [n for n in NUMBERS if n != scene.count])
        perturbed = Scene(
            scene.kind,
            tuple(objects),
            size=fields.get("size", scene.size),
            position=fields.get("position", scene.position),
            relation=scene.relation,
            count=fields.get("count", scene.count),
        )
        if perturbed.label != scene.label:  # e.g. a relation of two identical objects cannot be flipped
            return perturbed


def make_fusion_example(index, *, split, seed, image_size, voices):
    """Example `index` of a fusion-task split: an image, a caption (and its spoken audio) that describes it or, half
    of the time, differs from it in one object's colour, and the labels `match` (0/1), `colours` (the colour names in the
    image or the caption) and `count` (objects in the image, a float)."""
    # Its own random stream (offset split index), so the contrastive data's rows never change with this one.
    rng = np.random.default_rng([seed, 100 + SPLITS.index(split), index])
    scene = sample_scene(rng, held_out=False)
    matches = bool(rng.random() < 0.5)
    said = scene if matches else perturb_scene(scene, rng, FUSION_NEGATIVE_CHANGES)
    caption = caption_for(said, rng)
    image = io.BytesIO()
    draw_scene(scene, rng, image_size).save(image, format="PNG")
    colours = sorted({colour for colour, _ in scene.objects + said.objects}, key=list(COLOURS).index)
    example = {
        "image": {"bytes": image.getvalue(), "path": None},
        "caption": caption,
        "match": int(matches),
        "colours": colours,
        "count": float(len(scene.objects) * scene.count),
    }
    if voices:
        example["audio"] = spoken(caption, rng, voices, f"{split}-{index:06d}.wav")
    return example


def build_fusion_dataset(
    num_train=2000, num_validation=200, num_test=300, image_size=64, seed=0, with_audio=True, cache_dir=None
):
    """Build (or load from the cache) the built-in fusion tasks: a `DatasetDict` with `train`/`validation`/`test`.

    Columns: `image`, `caption`, `audio` (as in `build_synthetic_dataset`), `match` (int: 1 when the caption describes
    the image, 0 when it differs in one object's colour; half of each), `colours` (list of str) and `count` (float). `match`
    needs the image and a caption (text or spoken): from one of them alone it is at chance. Cached like
    `build_synthetic_dataset`, under its own key; scenes use the seen (colour, shape) pairs in every split.

    >>> data = build_fusion_dataset(num_train=8, num_validation=2, num_test=2, image_size=32)  # doctest: +SKIP
    >>> data["train"].column_names  # doctest: +SKIP
    ['image', 'caption', 'audio', 'match', 'colours', 'count']
    """
    with_audio = audio_possible(with_audio)
    sizes = {"train": num_train, "validation": num_validation, "test": num_test}
    key = dict(
        tasks="fusion", version=FUSION_GENERATOR_VERSION, sizes=sizes, image_size=image_size, seed=seed, audio=with_audio
    )

    def build(voices):
        features = Features({"image": Image(), "caption": Value("string")})
        if voices:
            features["audio"] = Audio(decode=False)
        features.update({"match": Value("int64"), "colours": Sequence(Value("string")), "count": Value("float32")})
        make = partial(make_fusion_example, seed=seed, image_size=image_size, voices=voices)
        return {
            split: build_rows(partial(make, split=split), size, features, f"fusion {split}")
            for split, size in sizes.items()
            if size > 0
        }

    return build_cached("fusion tasks", key, build, with_audio, cache_dir)
