"""examples/run_captioning.py end to end, called as `main([...])` on tiny settings: the built-in data (captions from
images, scored by BLEU/CIDEr before and after), user data in a folder (captions from audio), the errors a user can
run into; plus the caption metrics it reports."""

import json

import evaluate
import pytest
from huggingface_hub import ModelCard

import training_mm.caption_metrics
from testers import TINY_RUN, write_folder
from training_mm.caption_metrics import bleu, caption_metrics, cider_d, tokenize

import run_captioning

TINY = [
    "--preset", "tiny", *TINY_RUN,
    "--learning_rate", "3e-3",
    "--warmup_steps", "0",
    "--max_steps", "30",
    "--logging_steps", "10",
    "--generation_max_new_tokens", "16",
]  # fmt: skip


def test_builtin_run_beats_the_untrained_model_and_writes_a_captioner(builtin_data, tmp_path, capsys):
    output_dir = tmp_path / "out"
    metrics = run_captioning.main([*TINY, "--output_dir", str(output_dir)])
    assert {"bleu", "cider", "baseline bleu", "baseline cider", "train_loss"} <= set(metrics)
    assert metrics["cider"] > metrics["baseline cider"]
    assert "CIDEr-D" in capsys.readouterr().out

    files = {path.name for path in output_dir.iterdir()}
    assert {"model.safetensors", "modeling_mm_generation.py", "pipeline_mm.py", "processor_config.json"} <= files
    assert "training_args.bin" not in files
    config = json.loads((output_dir / "config.json").read_text())
    assert "image-to-text" in config["custom_pipelines"]
    card = ModelCard.load(output_dir / "README.md")
    assert card.data.pipeline_tag == "image-to-text"
    assert {result.metric_type for result in card.data.eval_results} == {"bleu", "cider"}


def test_user_folder_with_audio_captions_from_speech(builtin_data, tmp_path):
    """A folder in imagefolder layout (metadata.jsonl with image and audio files), captioned from its audio."""
    folder = tmp_path / "data"
    for split in ("train", "test"):
        write_folder(builtin_data[split], folder / split)
    metrics = run_captioning.main(
        [*TINY, "--max_steps", "4", "--dataset_name", str(folder), "--modality", "audio",
         "--max_eval_samples", "8", "--output_dir", str(tmp_path / "out")]
    )
    assert set(metrics) >= {"bleu", "cider"}
    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert card.data.pipeline_tag == "automatic-speech-recognition"


def test_asking_for_a_modality_the_data_lacks_names_the_column(builtin_data, tmp_path):
    folder = tmp_path / "images-only"
    for split in ("train", "test"):
        split_data = builtin_data[split]
        write_folder(split_data.remove_columns([c for c in ("audio",) if c in split_data.column_names]), folder / split)
    args = [*TINY, "--dataset_name", str(folder), "--modality", "audio", "--output_dir", str(tmp_path / "out")]
    with pytest.raises(ValueError, match=r"--modality audio.*no audio column.*--audio_column"):
        run_captioning.main(args)


def test_existing_output_folder_is_never_overwritten_without_the_flag(builtin_data, tmp_path):
    (tmp_path / "keep.txt").write_text("someone's file")
    with pytest.raises(FileExistsError, match="--overwrite_output_dir"):
        run_captioning.main([*TINY, "--output_dir", str(tmp_path)])


# ------------------------------------------------------------------------------------------------ metrics


def test_cider_d_matches_the_coco_toolkit():
    """Reference value computed with pycocoevalcap 1.2's CiderScorer on the same (tokenized) captions."""
    predictions = ["a red circle on the left", "two blue stars", "a green square above a red circle"]
    references = [
        ["a red circle on the left", "there is a red circle on the left"],
        ["three blue stars"],
        ["a green square over a red circle", "a red circle under a green square"],
    ]
    assert cider_d(predictions, references) == pytest.approx(5.162790989383594, rel=1e-12)
    assert bleu(predictions, references) == pytest.approx(64.50001140844256, rel=1e-9)


def test_caption_metrics_load_offline_as_an_evaluate_module(monkeypatch, tmp_path):
    """The scripts' caption scores are an `evaluate` metric that loads from its file, with the Hub unreachable, and
    gives the same numbers batch by batch as in one call."""
    monkeypatch.setattr(evaluate.config, "HF_EVALUATE_OFFLINE", True)
    monkeypatch.setattr(evaluate.config, "HF_MODULES_CACHE", tmp_path / "modules")
    predictions = ["a red circle on the left", "three stars", "a green square"]
    references = [["a red circle on the left", "there is a red circle"], ["three blue stars"], ["a green square"]]
    metric = evaluate.load(training_mm.caption_metrics.__file__)
    metric.add_batch(predictions=predictions[:2], references=references[:2])
    metric.add_batch(predictions=predictions[2:], references=references[2:])
    scores = metric.compute()
    assert scores == pytest.approx(caption_metrics(predictions, references), rel=1e-12)
    assert scores["cider"] == pytest.approx(cider_d(predictions, references), rel=1e-12) and scores["bleu"] > 0


def test_caption_metrics_rank_better_captions_higher_and_check_their_input():
    references = [["a red circle on the left"], ["two blue stars"], ["a green square"]]
    perfect = caption_metrics([refs[0] for refs in references], references)
    partial = caption_metrics(["a red circle", "two stars", "a square"], references)
    wrong = caption_metrics(["xyz", "xyz", "xyz"], references)
    assert perfect["bleu"] == pytest.approx(100.0) and perfect["cider"] > partial["cider"] > wrong["cider"] == 0.0
    assert tokenize("A red circle, on the LEFT.") == ["a", "red", "circle", "on", "the", "left"]
    with pytest.raises(ValueError, match="one prediction per item"):
        caption_metrics(["a"], [["a"], ["b"]])
    with pytest.raises(ValueError, match=r"references\[0\] must be a non-empty list"):
        caption_metrics(["a"], ["a"])
