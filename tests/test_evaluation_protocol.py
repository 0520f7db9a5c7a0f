"""Benchmarks as people have them on disk (Karpathy JSON, AudioCaps and Clotho CSVs), scored by the published
retrieval protocol (unique galleries, any-caption hits, recall@k, mAP, nDCG@10), and the examples' evaluate-only
mode (`--do_train false`) for retrieval and captioning."""

import csv
import json

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from modeling_mm import MMForConditionalGeneration
from testers import save_tiny_base
from training_mm.data import load_user_dataset
from training_mm.retrieval import retrieval_metrics

import run_captioning
import run_clip

COLOURS = ((220, 40, 40), (40, 170, 60), (40, 90, 230), (235, 210, 40), (150, 60, 200), (245, 135, 25))
WORDINGS = ("a {} square", "the {} square", "a picture of a {} square", "one {} square", "a {} square, centred")
NAMES = ("red", "green", "blue", "yellow", "purple", "orange")


def _captions(index):
    return [wording.format(NAMES[index % len(NAMES)]) for wording in WORDINGS]  # five per item


def _image(path, index):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), COLOURS[index % len(COLOURS)]).save(path)


def _clip(path, index):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, 0.1 * np.sin(2 * np.pi * (220 + 110 * index) * np.arange(8000) / 16000), 16000)


def karpathy_coco(root, splits=("train", "train", "restval", "val", "test", "test")):
    """dataset_coco.json with COCO's `filepath`/`filename` layout under images/, one image per entry of `splits`."""
    entries = []
    for index, split in enumerate(splits):
        filepath = "val2014" if split != "train" else "train2014"
        filename = f"COCO_{filepath}_{index:012d}.jpg"
        _image(root / "images" / filepath / filename, index)
        sentences = [{"raw": caption + " ", "tokens": caption.split()} for caption in _captions(index)]
        entries.append(
            dict(filepath=filepath, filename=filename, split=split, cocoid=1000 + index, sentences=sentences)
        )
    (root / "dataset_coco.json").write_text(json.dumps({"dataset": "coco", "images": entries}))
    return root


def _write_csv(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)


def audiocaps(root):
    """train/val/test.csv; clips in audio/<split>/<youtube_id>.wav; the last train clip was never downloaded."""
    for split, items in (("train", [0, 1, 2]), ("val", [3]), ("test", [4, 5])):
        rows = []
        for index in items:
            youtube_id = f"yt{index:09d}"
            if not (split == "train" and index == 2):
                _clip(root / "audio" / split / f"{youtube_id}.wav", index)
            rows += [(100 * index + j, youtube_id, 30, caption) for j, caption in enumerate(_captions(index))]
        _write_csv(root / f"{split}.csv", ("audiocap_id", "youtube_id", "start_time", "caption"), rows)
    return root


def clotho(root):
    """clotho_captions_<split>.csv (file_name, caption_1..5) and the development/validation/evaluation folders."""
    for split, items in (("development", [0, 1]), ("validation", [2]), ("evaluation", [3, 4])):
        rows = []
        for index in items:
            file_name = f"clip, number {index}.wav"  # Clotho's names hold spaces and commas
            _clip(root / split / file_name, index)
            rows.append((file_name, *_captions(index)))
        _write_csv(root / f"clotho_captions_{split}.csv", ("file_name", *[f"caption_{i}" for i in range(1, 6)]), rows)
    return root


# ------------------------------------------------------------------------------------------------ formats


def test_karpathy_json_is_read_with_its_own_splits_and_one_item_per_image(tmp_path):
    root = karpathy_coco(tmp_path / "coco")
    for name in (root, root / "dataset_coco.json"):
        splits = load_user_dataset(name)
        # restval joins train (Karpathy's 113k training images); val is validation; five captions per image.
        assert {split: len(rows) for split, rows in splits.items()} == {"train": 15, "validation": 5, "test": 10}
        assert sorted(splits["test"].column_names) == ["caption", "image", "label"]
        assert splits["test"]["label"] == ["1004"] * 5 + ["1005"] * 5
        assert splits["test"][0]["caption"] == "a purple square"  # stripped, as written
        assert splits["test"][0]["image"].size == (32, 32)

    with pytest.raises(ValueError, match="--dataset_format clotho: .* is not in that layout"):
        load_user_dataset(root, dataset_format="clotho")


def test_audiocaps_and_clotho_layouts_give_clips_with_five_captions(tmp_path, caplog):
    with caplog.at_level("WARNING"):
        splits = load_user_dataset(audiocaps(tmp_path / "audiocaps"))
    assert {split: len(rows) for split, rows in splits.items()} == {"train": 10, "validation": 5, "test": 10}
    assert "5 captions have no downloaded clip" in caplog.text  # the clip never downloaded is left out, counted
    assert set(splits["test"]["label"]) == {"yt000000004", "yt000000005"}
    assert splits["test"][0]["audio"]["path"].endswith("audio/test/yt000000004.wav")

    splits = load_user_dataset(clotho(tmp_path / "clotho"), dataset_format="clotho")
    assert {split: len(rows) for split, rows in splits.items()} == {"train": 10, "validation": 5, "test": 10}
    assert splits["test"]["label"][:6] == ["clip, number 3.wav"] * 5 + ["clip, number 4.wav"]
    assert splits["test"]["caption"][:2] == ["a yellow square", "the yellow square"]


# ------------------------------------------------------------------------------------------------ the protocol


class _OneHotProcessor:
    """Images embed as their red channel's item id; captions as the number they start with (4: a stray caption)."""

    def __call__(self, text=None, images=None, return_tensors="pt"):
        if text is not None:
            return {"input_ids": torch.tensor([int(caption.split()[0]) for caption in text])}
        return {"pixel_values": torch.tensor([[float(image.getpixel((0, 0))[0])] for image in images])}


class _OneHotModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.images_embedded = 0

    def forward(self, input_ids=None, pixel_values=None):
        if input_ids is not None:
            # Captions 0-3 embed as their item; caption 4 close to item 2 (cosine 0.8), orthogonal to the others.
            table = torch.cat([torch.eye(4), torch.tensor([[0.0, 0.0, 0.8, 0.6]])])
            return {"text_embeds": table[input_ids]}
        self.images_embedded += len(pixel_values)
        return {"image_embeds": torch.nn.functional.one_hot(pixel_values[:, 0].long(), 4).float()}


def test_published_protocol_scores_each_image_once_and_counts_any_of_its_captions():
    """Three images with two captions each; image 1's second caption embeds close to image 2."""
    import datasets

    images = [Image.new("RGB", (4, 4), (item, 0, 0)) for item in (1, 2, 3)]
    rows = [
        {"image": images[item - 1], "caption": f"{shown} caption", "label": str(item)}
        for item, shown in ((1, 1), (1, 4), (2, 2), (2, 2), (3, 3), (3, 3))
    ]
    dataset = datasets.Dataset.from_list(rows)
    model = _OneHotModel()
    metrics = retrieval_metrics(model, _OneHotProcessor(), dataset, ("image",), batch_size=4)
    assert model.images_embedded == 3  # a gallery of unique images, not one per caption
    # text->image: 5 of 6 captions find their image first; image->text: every image's top caption is one of its own.
    assert metrics["recall@1 text->image"] == pytest.approx(5 / 6)
    assert metrics["recall@1 image->text"] == metrics["recall@5 image->text"] == 1.0
    assert metrics["recall@1 text->image"] < metrics["recall@5 text->image"] == 1.0
    # Average precision with ties (scikit-learn): image 1 ranks one caption first and the other in a five-way tie
    # at 0 (0.5 + 0.5 * 2/6); images 2 and 3 rank both of theirs first.
    assert metrics["mAP image->text"] == pytest.approx((2 / 3 + 1 + 1) / 3)
    assert set(metrics) == {
        f"{name} {direction}"
        for direction in ("image->text", "text->image")
        for name in ("recall@1", "recall@5", "recall@10", "mAP", "nDCG@10")
    }


# ------------------------------------------------------------------------------------------------ evaluate only


def test_run_clip_evaluates_a_checkpoint_on_karpathy_data_without_training(tmp_path, capsys):
    checkpoint = save_tiny_base(tmp_path / "ckpt")
    before = {path.name: path.stat().st_mtime_ns for path in checkpoint.iterdir()}
    data = karpathy_coco(tmp_path / "coco")
    output_dir = tmp_path / "scores"
    args = ["--model_name_or_path", str(checkpoint), "--dataset_name", str(data), "--do_train", "false",
            "--min_retrieval_gallery", "2", "--output_dir", str(output_dir), "--report_to", "none"]  # fmt: skip
    metrics = run_clip.main(args)
    for direction in ("image->text", "text->image"):
        assert 0 <= metrics[f"recall@1 {direction}"] <= metrics[f"recall@5 {direction}"] <= 1
        assert 0 < metrics[f"mAP {direction}"] <= 1 and 0 < metrics[f"nDCG@10 {direction}"] <= 1
    # Two test images, each with all five captions: image->text at 5 is a sure hit.
    assert metrics["recall@5 image->text"] == 1.0
    assert json.loads((output_dir / "eval_results.json").read_text()) == pytest.approx(metrics)
    assert "Retrieval of the checkpoint" in capsys.readouterr().out
    assert {path.name: path.stat().st_mtime_ns for path in checkpoint.iterdir()} == before  # checkpoint untouched
    assert not (output_dir / "model.safetensors").exists()  # nothing trained, nothing saved

    with pytest.raises(FileExistsError, match="is not empty"):  # results are never written over without the flag
        run_clip.main(args)
    with pytest.raises(ValueError, match="--do_train false evaluates a trained model"):
        run_clip.main(["--dataset_name", str(data), "--do_train", "false", "--output_dir", str(tmp_path / "x")])


def test_run_captioning_evaluates_a_checkpoint_once_per_image(tmp_path, capsys):
    checkpoint = save_tiny_base(tmp_path / "ckpt", MMForConditionalGeneration)
    data = karpathy_coco(tmp_path / "coco")
    output_dir = tmp_path / "scores"
    metrics = run_captioning.main(
        ["--model_name_or_path", str(checkpoint), "--dataset_name", str(data), "--do_train", "false",
         "--generation_max_new_tokens", "4", "--output_dir", str(output_dir), "--report_to", "none"]  # fmt: skip
    )
    assert set(metrics) == {"bleu", "cider"}
    assert json.loads((output_dir / "eval_results.json").read_text()) == pytest.approx(metrics)
    # Two test images with five captions each: two captions generated, scored against ten references.
    assert "Captions of 2 held-out test items, scored against 10 references" in capsys.readouterr().out


@pytest.mark.parametrize("layout", [audiocaps, clotho])
def test_run_clip_evaluates_text_audio_retrieval_on_audiocaps_and_clotho(layout, tmp_path):
    checkpoint = save_tiny_base(tmp_path / "ckpt")
    output_dir = tmp_path / "scores"
    metrics = run_clip.main(
        ["--model_name_or_path", str(checkpoint), "--dataset_name", str(layout(tmp_path / "data")), "--do_train",
         "false", "--min_retrieval_gallery", "2", "--output_dir", str(output_dir), "--report_to", "none"]  # fmt: skip
    )
    assert {name.split()[1] for name in metrics} == {"audio->text", "text->audio"}
    assert metrics["recall@5 audio->text"] == 1.0  # two test clips, five captions each
    assert json.loads((output_dir / "eval_results.json").read_text()) == pytest.approx(metrics)
