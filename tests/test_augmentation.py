"""Train-time augmentation keeps captions true: a flipped scene's caption and label say the mirrored positions, a crop
keeps every counted shape, and run_clip's --augment reaches the training rows only."""

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from training_mm.media_inputs import undecoded
from training_mm.augmentation import CaptionAwareAugmentation, content_box, mirror_label
from training_mm.synthetic_data import COLOURS, Scene, caption_for, draw_scene

import run_clip

SIZE = 64


def _scene_row(scene, seed=0, **extra):
    rng = np.random.default_rng(seed)
    return {"image": draw_scene(scene, rng, SIZE), "caption": caption_for(scene, rng), "label": scene.label, **extra}


def _augment(rows, **kwargs):
    batch = {name: [row[name] for row in rows] for name in rows[0]}
    out = CaptionAwareAugmentation(**kwargs)(batch)
    return [{name: out[name][index] for name in out} for index in range(len(rows))]


def _centre_x(image, colour):
    """Mean column of the pixels close to a built-in colour."""
    pixels = np.asarray(image, dtype=np.int16)
    near = (np.abs(pixels - np.array(COLOURS[colour])) < 60).all(axis=-1)
    return np.flatnonzero(near.any(axis=0)).mean()


def _content(image):
    """Pixels far from the background colour (the top-left corner)."""
    pixels = np.asarray(image, dtype=np.int16)
    return np.abs(pixels - pixels[0, 0]).max(axis=-1) > 60


FLIP = dict(flip_probability=1.0, crop_probability=0.0)


def test_a_flipped_scene_mirrors_the_image_and_says_the_mirrored_positions():
    single = _scene_row(Scene("single", (("red", "star"),), size="large", position="left"))
    relation = _scene_row(Scene("relation", (("red", "star"), ("blue", "square")), relation="left of"), seed=3)
    above = _scene_row(Scene("relation", (("red", "star"), ("blue", "square")), relation="above"))
    flipped = _augment([single, relation, above], **FLIP)

    for before, after in zip((single, relation, above), flipped):
        np.testing.assert_array_equal(np.asarray(after["image"]), np.asarray(before["image"])[:, ::-1])
    assert "on the left" in single["caption"] and "on the right" in flipped[0]["caption"]
    assert flipped[0]["label"] == "large red star on the right"
    assert _centre_x(flipped[0]["image"], "red") > SIZE / 2
    # The relation's label stays canonical ("left of"), and what it says holds in the flipped picture.
    assert flipped[1]["label"] == "blue square left of red star"
    assert _centre_x(flipped[1]["image"], "blue") < _centre_x(flipped[1]["image"], "red")
    said_left = "right" not in relation["caption"]  # the caption is worded "A left of B" or "B right of A"
    assert ("left" in flipped[1]["caption"]) != said_left and ("right" in flipped[1]["caption"]) == said_left
    # Nothing horizontal to mirror: caption and label stay as they were.
    assert (flipped[2]["caption"], flipped[2]["label"]) == (above["caption"], above["label"])


def test_relation_labels_of_a_scene_and_of_its_mirror_image_agree():
    # Equal scenes must keep equal labels (they are the positives of the loss): the mirror of "A right of B" is
    # written in the canonical form the built-in data uses.
    scene = Scene("relation", (("red", "star"), ("blue", "square")), relation="left of")
    mirrored = Scene("relation", (("blue", "square"), ("red", "star")), relation="left of")
    assert mirror_label(scene.label) == mirrored.label
    assert mirror_label(mirror_label(scene.label)) == scene.label


def test_spoken_rows_that_name_a_side_are_never_flipped():
    audio = {"bytes": b"RIFF", "path": None}
    side = _scene_row(Scene("single", (("red", "star"),), size="small", position="left"), audio=audio)
    top = _scene_row(Scene("single", (("red", "star"),), size="small", position="top"), audio=audio)
    kept, flipped = _augment([side, top], **FLIP)
    np.testing.assert_array_equal(np.asarray(kept["image"]), np.asarray(side["image"]))
    assert kept["caption"] == side["caption"]
    np.testing.assert_array_equal(np.asarray(flipped["image"]), np.asarray(top["image"])[:, ::-1])
    # Without the audio in training (audio_column=None), the side is flipped, caption and all.
    (free,) = _augment([side], **FLIP, audio_column=None)
    assert "on the right" in free["caption"]


def test_a_crop_keeps_every_counted_shape_whole():
    torch.manual_seed(0)
    rows = [_scene_row(Scene("count", (("yellow", "hexagon"),), count=n), seed=seed) for n in (2, 3, 4) for seed in range(8)]
    crops = _augment(rows, flip_probability=0.0, crop_probability=1.0, crop_scale=(0.3, 0.8))
    changed = 0
    for row, crop in zip(rows, crops):
        before, after = _content(row["image"]), _content(crop["image"])
        # As many separate shapes as before (two copies may touch in the drawing itself).
        assert ndimage.label(after)[1] == ndimage.label(before)[1], row["caption"]
        # A crop zooms in, so the shapes cover at least the share of the frame they did, unless one was cut.
        assert after.mean() >= before.mean() * 0.97
        changed += not np.array_equal(np.asarray(crop["image"]), np.asarray(row["image"]))
    assert changed >= 5  # the crops do crop where the shapes leave room (a 3x3 grid of copies often does not)


def test_content_box_of_a_plain_background_photo_is_its_shapes_and_of_noise_the_frame():
    row = _scene_row(Scene("single", (("green", "circle"),), size="small", position="right"))
    left, top, right, bottom = content_box(row["image"])
    assert left > SIZE / 2 and right <= SIZE and bottom - top < SIZE / 2
    noise = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    assert content_box(Image.fromarray(noise)) == (0, 0, SIZE, SIZE)


def test_run_clip_augments_the_training_rows_it_reads(builtin_data):
    train = builtin_data["train"]
    torch.manual_seed(0)
    augmented = run_clip.augmented(train.remove_columns("audio"), ("image",))
    rows = [augmented[index] for index in range(len(train))]
    flipped = [r for r, o in zip(rows, train) if np.array_equal(np.asarray(r["image"]), np.asarray(o["image"])[:, ::-1])]
    assert flipped, "no row was flipped"
    for row, original in zip(rows, train):
        if "left" in original["caption"] and np.array_equal(np.asarray(row["image"]), np.asarray(original["image"])[:, ::-1]):
            assert "right" in row["caption"]
    # run_clip keeps files undecoded until the loader reads them; the augmentation decodes them itself.
    lazy = run_clip.augmented(undecoded(train.remove_columns("audio")), ("image",))
    assert isinstance(lazy[0]["image"], Image.Image) and lazy[0]["image"].size == train[0]["image"].size
    # Streamed training data is augmented as it streams.
    streamed = list(run_clip.augmented(train.remove_columns("audio").to_iterable_dataset(), ("image",)))
    assert len(streamed) == len(train) and all(isinstance(row["image"], Image.Image) for row in streamed)
    with pytest.raises(ValueError, match="augments images"):
        run_clip.augmented(train.remove_columns("image"), ("audio",))


def test_run_clip_trains_with_augment_on_images_and_spoken_captions(builtin_data, tmp_path):
    from testers import TINY_RUN

    metrics = run_clip.main(
        ["--preset", "tiny", *TINY_RUN, "--augment", "--eval_strategy", "no", "--min_retrieval_gallery", "1",
         "--output_dir", str(tmp_path / "out")]  # fmt: skip
    )
    assert np.isfinite(metrics["train_loss"]) and "recall@1 image->text" in metrics
