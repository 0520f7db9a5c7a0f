"""examples/run_clip.py end to end, called as `main([...])` on tiny settings: the built-in data, a local imagefolder, a
CSV (also streamed), towers from local checkpoints, continuing a checkpoint, resuming a killed run (with and without
the learning-rate meta-controller, whose values also reach TensorBoard), pushing to a (local) Hub, and the errors a user
can run into."""

import contextlib
import io
import json
import math
import shutil

import pytest
import torch
from huggingface_hub import ModelCard

from testers import (
    NUM_EVAL,
    NUM_TRAIN,
    TINY_RUN,
    record_meta_controllers,
    run_clean,
    tensorboard_scalars,
    tiny_processor,
    tiny_tokenizer,
    write_folder,
)
from training_mm.collators import ContrastiveCollator, group_ids
from training_mm.retrieval import PROTOCOL, recall_at_k

import run_clip

# The built-in data these arguments ask for is built once per session by the `builtin_data` fixture (conftest). Its
# held-out splits are far below the gallery retrieval is reported on by default (MIN_GALLERY); these runs measure
# recall@k anyway, to check the measuring and reporting path.
TINY = ["--preset", "tiny", *TINY_RUN, "--learning_rate", "2e-3", "--min_retrieval_gallery", "1"]
DIRECTIONS = ("image->text", "text->image", "audio->text", "text->audio")


@pytest.fixture(scope="module")
def trained(builtin_data, tmp_path_factory):
    """One run on the built-in data with evaluation and TensorBoard on: (metrics, output folder, what it printed)."""
    output_dir = tmp_path_factory.mktemp("run") / "out"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        metrics = run_clip.main(
            [*TINY, "--output_dir", str(output_dir), "--eval_strategy", "steps", "--eval_steps", "3",
             "--report_to", "tensorboard"]  # fmt: skip
        )
    return metrics, output_dir, printed.getvalue()


def _losses(checkpoint):
    history = json.loads((checkpoint / "trainer_state.json").read_text())["log_history"]
    return {entry["step"]: entry for entry in history if "loss" in entry}


# ------------------------------------------------------------------------------------------------ building blocks


def test_collator_batches_rows_with_group_labels(builtin_data):
    rows = [builtin_data["train"][i] for i in range(4)]
    rows[3] = {**rows[3], "label": rows[0]["label"]}  # same scene as row 0: a positive, whatever the wording
    modalities = tuple(name for name in ("image", "audio") if name in rows[0])
    batch = ContrastiveCollator(tiny_processor(), modalities)(rows)
    assert batch["return_loss"] is True and batch["pixel_values"].shape == (4, 3, 32, 32)
    assert batch["group_ids"].tolist() == group_ids([row["label"] for row in rows]).tolist()
    assert batch["group_ids"][0] == batch["group_ids"][3] and len(set(batch["group_ids"][:3].tolist())) == 3
    if "audio" in modalities:
        assert batch["input_features"].shape[:2] == (4, 32) and batch["audio_attention_mask"].shape[0] == 4
    unlabelled = ContrastiveCollator(tiny_processor(), modalities, return_loss=False)([{**rows[0], "label": None}])
    assert "group_ids" not in unlabelled and "return_loss" not in unlabelled


def test_recall_counts_a_hit_for_any_neighbour_that_shares_the_query_key():
    """Captions repeat, so retrieving another item with the query's label is as right as retrieving its own."""
    gallery = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [-1.0, 0.0]]), dim=-1)
    queries = torch.nn.functional.normalize(torch.tensor([[0.8, 0.2], [0.0, 1.0], [0.6, -0.8]]), dim=-1)
    # Query 0's nearest is item 1, which shares its key "a"; query 1's is item 2 ("b"); query 2's key "c" is 3rd.
    recalls = recall_at_k(queries, gallery, ["a", "b", "c"], ["x", "a", "b", "c"], ks=(1, 2, 3))
    assert recalls == {1: pytest.approx(2 / 3), 2: pytest.approx(2 / 3), 3: 1.0}


# ------------------------------------------------------------------------------------------------ built-in data


def test_builtin_run_reports_recall_and_writes_a_hub_folder(trained, builtin_data):
    metrics, output_dir, printed = trained
    has_audio = "audio" in builtin_data["train"].column_names
    directions = DIRECTIONS if has_audio else DIRECTIONS[:2]
    for direction in directions:
        for prefix in ("", "baseline "):
            recalls = [metrics[f"{prefix}recall@{k} {direction}"] for k in (1, 5, 10)]
            assert 0.0 <= recalls[0] <= recalls[1] <= recalls[2] <= 1.0  # more neighbours can only find more hits
        # The printed table: one row per direction, before -> after for k = 1, 5, 10.
        row = next(line for line in printed.splitlines() if line.startswith(direction))
        assert row.split()[1:10] == [
            f"{metrics[f'{prefix}recall@{k} {direction}']:.3f}" if prefix is not None else "->"
            for k in (1, 5, 10)
            for prefix in ("baseline ", None, "")
        ]
    assert math.isfinite(metrics["train_loss"]) and math.isfinite(metrics["eval_loss"])

    files = {path.name for path in output_dir.iterdir()}
    assert {"model.safetensors", "config.json", "modeling_mm.py", "configuration_mm.py", "processing_mm.py",
            "processor_config.json", "tokenizer.json", "README.md"} <= files  # fmt: skip
    assert "training_args.bin" not in files  # no pickles in a Hub folder
    assert list((output_dir / "runs").rglob("events.out.tfevents.*")), "--report_to tensorboard wrote no events"

    # The card reports the numbers this run measured, not constants.
    card = ModelCard.load(output_dir / "README.md")
    reported = {result.metric_name: result.metric_value for result in card.data.eval_results}
    measured = {name: value for name, value in metrics.items() if "->" in name and not name.startswith("baseline")}
    assert {name.split()[0] for name in measured} == {"recall@1", "recall@5", "recall@10", "mAP", "nDCG@10"}
    assert reported == pytest.approx(measured)
    # model-index names the data, the split and the protocol of every figure.
    assert {(r.dataset_split, r.metric_config) for r in card.data.eval_results} == {("test", PROTOCOL)}
    assert "synthetic" in card.text.lower()
    distinct = len(set(builtin_data["test"]["label"]))  # scenes repeat: fewer than the NUM_EVAL rows
    assert f"Retrieval on the held-out `test` split: a gallery of {distinct} distinct items ({NUM_EVAL} rows)" in (
        card.text
    )

    # As transformers' examples: the run's figures in train/eval/all_results.json, every card figure among them.
    results = {split: json.loads((output_dir / f"{split}_results.json").read_text()) for split in ("train", "eval", "all")}
    assert results["eval"] == pytest.approx({**reported, "eval_loss": metrics["eval_loss"]})
    assert results["train"]["train_loss"] == pytest.approx(metrics["train_loss"]) and results["train"]["train_runtime"] > 0
    assert results["all"] == {**results["train"], **results["eval"]}


def test_retrieval_on_a_small_gallery_is_neither_reported_nor_published(builtin_data, tmp_path, caplog):
    """recall@k over a few dozen items is noise: below --min_retrieval_gallery (default 100 distinct items) the run
    measures nothing, and the log and the card say so with the gallery's size."""
    distinct = len(set(builtin_data["test"]["label"]))
    args = [*TINY[:-2], "--max_steps", "1", "--output_dir", str(tmp_path / "out")]
    with caplog.at_level("WARNING"):
        metrics = run_clip.main(args)
    assert not [name for name in metrics if "recall@" in name]
    note = f"Retrieval not measured: {distinct} items ({NUM_EVAL} rows) in the held-out `test` split, fewer than 100"
    assert note in caplog.text
    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert note in card.text and not card.data.eval_results


def test_existing_output_folder_is_never_overwritten_without_the_flag(trained):
    _, output_dir, _ = trained
    before = (output_dir / "model.safetensors").stat().st_mtime_ns
    with pytest.raises(FileExistsError, match="--overwrite_output_dir"):
        run_clip.main([*TINY, "--output_dir", str(output_dir)])
    assert (output_dir / "model.safetensors").stat().st_mtime_ns == before


def test_continuing_a_checkpoint_starts_from_its_weights(trained, tmp_path, hub_server):
    """The folder a run writes is a starting point: the next run's before-training recall is the last run's
    after-training recall. Also pushed to the (local) Hub, without the local checkpoints and logs."""
    metrics, output_dir, _ = trained
    args = [*TINY, "--model_name_or_path", str(output_dir), "--max_steps", "1"]
    push = ["--push_to_hub", "--hub_model_id", "mm-tester/tiny-clip"]
    again = run_clip.main([*args, "--output_dir", str(tmp_path / "next"), *push])
    for name, value in metrics.items():
        if name.startswith("recall@"):
            assert again[f"baseline {name}"] == pytest.approx(value)

    pushed = hub_server.files("mm-tester/tiny-clip")
    assert {"model.safetensors", "config.json", "modeling_mm.py", "README.md", "tokenizer.json"} <= set(pushed)
    assert not [path for path in pushed if path.startswith(("checkpoint-", "runs/"))]
    # A repo with files is never overwritten, and that is found out before training, not after.
    with pytest.raises(FileExistsError, match="mm-tester/tiny-clip"):
        run_clip.main([*args, "--output_dir", str(tmp_path / "again"), *push])
    assert not (tmp_path / "again").exists()


def test_meta_controller_never_raises_a_finetunes_learning_rate_on_small_updates(trained, tmp_path, monkeypatch):
    """From scratch the controller may grow the LR beyond the schedule while the updates are small; from trained
    weights a small LR is deliberate, so run_clip builds it with min_update_ratio=0."""
    import training_mm.meta_controller as meta_controller

    built = record_meta_controllers(monkeypatch)
    _, output_dir, _ = trained
    args = [*TINY, "--meta_controller", "--max_steps", "1"]
    run_clip.main([*args, "--output_dir", str(tmp_path / "scratch")])
    run_clip.main([*args, "--model_name_or_path", str(output_dir), "--output_dir", str(tmp_path / "finetune")])
    assert [callback.config["min_update_ratio"] for callback in built] == [meta_controller.MIN_UPDATE_RATIO, 0.0]


# ------------------------------------------------------------------------------------------------ user data


def test_imagefolder_run_skips_bad_rows_and_serves_zero_shot_pipeline(builtin_data, tmp_path, caplog):
    """An image-only folder with captions in metadata.jsonl (one image corrupt) trains, and the folder it writes
    serves pipeline("zero-shot-image-classification") where the mm packages are not installed."""
    folder = tmp_path / "photos"
    for split in ("train", "validation", "test"):
        data = builtin_data[split]
        write_folder(data.remove_columns([c for c in ("audio",) if c in data.column_names]), folder / split)
    (folder / "train" / "000000.png").write_bytes(b"not a png")
    output_dir = tmp_path / "out"

    with caplog.at_level("WARNING"):
        metrics = run_clip.main([*TINY, "--dataset_name", str(folder), "--output_dir", str(output_dir)])
    assert f"skipped 1 of {NUM_TRAIN} rows" in caplog.text
    assert {name.split(" ")[1] for name in metrics if name.startswith("recall@")} == {"image->text", "text->image"}

    image = builtin_data["test"][0]["image"]
    image.save(tmp_path / "query.png")
    out = run_clean(
        f"""
import json
from transformers import pipeline
classify = pipeline("zero-shot-image-classification", model={str(output_dir)!r}, trust_remote_code=True)
labels = ["a red circle", "a blue star", "two green squares"]
print(json.dumps(classify({str(tmp_path / "query.png")!r}, candidate_labels=labels)))
""",
        cwd=tmp_path,
    )
    scores = json.loads(out.strip().splitlines()[-1])
    assert sorted(s["label"] for s in scores) == ["a blue star", "a red circle", "two green squares"]
    assert sum(s["score"] for s in scores) == pytest.approx(1.0, abs=1e-4)


def test_csv_of_paths_and_captions_with_missing_column_error_and_streaming(builtin_data, tmp_path):
    """A CSV of image paths (relative to it) and captions, under other column names; a wrong name is an error that
    lists the columns there are; streamed, the run needs --max_steps (and here trains with the SigLIP loss, its
    images decoded in a DataLoader worker)."""
    rows = ["path,text"]
    for index, row in enumerate(builtin_data["train"]):
        row["image"].save(tmp_path / f"{index}.png")
        rows.append(f"{index}.png,\"{row['caption']}\"")
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    csv = str(tmp_path / "pairs.csv")

    with pytest.raises(ValueError, match=r"Column 'caption' not found.*\['path', 'text'\]"):
        run_clip.main([*TINY, "--dataset_name", csv, "--image_column", "path", "--output_dir", str(tmp_path / "a")])

    metrics = run_clip.main(
        [*TINY, "--dataset_name", csv, "--image_column", "path", "--caption_column", "text",
         "--output_dir", str(tmp_path / "b")]  # fmt: skip
    )
    assert "recall@1 image->text" in metrics and "recall@1 audio->text" not in metrics

    streamed = run_clip.main(
        [*TINY, "--dataset_name", csv, "--image_column", "path", "--caption_column", "text", "--streaming",
         "--loss_type", "siglip", "--dataloader_num_workers", "1", "--output_dir", str(tmp_path / "c")]  # fmt: skip
    )
    assert "recall@1 text->image" in streamed
    assert json.loads((tmp_path / "c" / "config.json").read_text())["loss_type"] == "siglip"
    with pytest.raises(ValueError, match="--max_steps"):
        run_clip.main(
            [*TINY, "--max_steps", "-1", "--dataset_name", csv, "--image_column", "path", "--caption_column", "text",
             "--streaming", "--output_dir", str(tmp_path / "d")]  # fmt: skip
        )


def test_towers_from_local_encoder_checkpoints(builtin_data, tmp_path):
    """--text_encoder / --vision_encoder compose a BERT and a ViT the way VisionTextDualEncoder does; the text
    encoder's tokenizer is used, and the written folder reloads with those towers."""
    from transformers import AutoTokenizer, BertConfig, BertModel, ViTConfig, ViTModel

    from modeling_mm import MMModel

    tokenizer = tiny_tokenizer()
    small = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64)
    bert = BertModel(BertConfig(vocab_size=len(tokenizer), max_position_embeddings=64, **small))
    bert.save_pretrained(tmp_path / "bert")
    tokenizer.save_pretrained(tmp_path / "bert")
    ViTModel(ViTConfig(image_size=32, patch_size=8, **small)).save_pretrained(tmp_path / "vit")

    output_dir = tmp_path / "out"
    metrics = run_clip.main(
        [*TINY, "--text_encoder", str(tmp_path / "bert"), "--vision_encoder", str(tmp_path / "vit"),
         "--output_dir", str(output_dir)]  # fmt: skip
    )
    assert math.isfinite(metrics["train_loss"])
    model = MMModel.from_pretrained(output_dir)
    assert type(model.text_model).__name__ == "BertModel" and type(model.vision_model).__name__ == "ViTModel"
    saved = AutoTokenizer.from_pretrained(output_dir)
    assert saved("a red star above a blue ring")["input_ids"] == tokenizer("a red star above a blue ring")["input_ids"]


def test_audio_tower_from_a_local_whisper_style_encoder(builtin_data, tmp_path):
    """--audio_encoder composes a Whisper-style encoder (Qwen2-Audio's, which takes exactly 2 x max_source_positions
    log-mel frames, here 3 s: longer than most clips, so batches are padded to it): the processor makes its mel bins
    and frames, audio retrieval is measured, and the written folder reloads with that tower. An encoder that does not
    take log-mel `input_features` is refused by name."""
    from transformers import ASTConfig, ASTModel, AutoConfig, AutoModel
    encoder = AutoModel.from_config(
        AutoConfig.for_model(
            "qwen2_audio_encoder", num_mel_bins=16, max_source_positions=150, d_model=32, encoder_layers=2,
            encoder_attention_heads=4, encoder_ffn_dim=64,
        )  # fmt: skip
    )
    encoder.save_pretrained(tmp_path / "qwen2_audio")

    output_dir = tmp_path / "out"
    metrics = run_clip.main([*TINY, "--audio_encoder", str(tmp_path / "qwen2_audio"), "--output_dir", str(output_dir)])
    assert math.isfinite(metrics["train_loss"])
    for direction in ("audio->text", "text->audio"):
        assert 0.0 <= metrics[f"recall@1 {direction}"] <= metrics[f"recall@10 {direction}"] <= 1.0
    model = AutoModel.from_pretrained(output_dir, trust_remote_code=True)
    assert type(model.audio_model).__name__ == "Qwen2AudioEncoder"
    assert model.config.audio_config.model_type == "qwen2_audio_encoder"
    extractor = json.loads((output_dir / "processor_config.json").read_text())["feature_extractor"]
    assert (extractor["feature_size"], extractor["max_length"]) == (16, 300)  # the encoder's mel bins and frames (3 s)

    ast = ASTModel(ASTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64))
    ast.save_pretrained(tmp_path / "ast")
    with pytest.raises(ValueError, match=r"takes `input_values`.*qwen2_audio_encoder"):
        run_clip.main([*TINY, "--audio_encoder", str(tmp_path / "ast"), "--output_dir", str(tmp_path / "refused")])


# ------------------------------------------------------------------------------------------------ resume


@pytest.mark.parametrize("meta_controller", [False, True], ids=["plain", "meta_controller"])
def test_resumed_run_continues_the_loss_curve_of_the_uninterrupted_one(builtin_data, tmp_path, meta_controller):
    """A run killed after a checkpoint and resumed with `--resume_from_checkpoint last` logs the same losses as the
    run that was never stopped. With the meta-controller, also the same controller logs: it decides every 10 steps,
    so a checkpoint at step 12 falls inside a window, and the step-20 decision needs the restored window and LSTM."""
    steps, every = (24, 12) if meta_controller else (6, 3)
    args = [*TINY, "--per_device_train_batch_size", "8", "--max_steps", str(steps), "--save_strategy", "steps",
            "--save_steps", str(every)]  # fmt: skip
    args += ["--meta_controller"] if meta_controller else []
    run_clip.main([*args, "--output_dir", str(tmp_path / "full")])

    killed = tmp_path / "killed"
    killed.mkdir()
    shutil.copytree(tmp_path / "full" / f"checkpoint-{every}", killed / f"checkpoint-{every}")
    if meta_controller:
        assert (killed / f"checkpoint-{every}" / "meta_controller.safetensors").is_file()
    run_clip.main([*args, "--output_dir", str(killed), "--resume_from_checkpoint", "last"])

    full, resumed = _losses(tmp_path / "full" / f"checkpoint-{steps}"), _losses(killed / f"checkpoint-{steps}")
    assert sorted(resumed) == sorted(full) == list(range(1, steps + 1))
    for step in range(every + 1, steps + 1):
        logged = [key for key in full[step] if key == "loss" or key.startswith("meta_")]
        assert meta_controller == any(key.startswith("meta_") for key in logged)
        for key in logged:
            assert resumed[step][key] == pytest.approx(full[step][key], rel=1e-4), f"{key} at step {step}"


def test_resume_needs_a_checkpoint(builtin_data, tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        run_clip.main([*TINY, "--output_dir", str(tmp_path), "--resume_from_checkpoint", "last"])


def test_meta_controller_values_reach_tensorboard(builtin_data, tmp_path):
    """With `--report_to tensorboard`, the meta-controller's `meta_*` values are plotted next to the loss at every
    logging step: the controller runs before the reporting callbacks, which Trainer would otherwise call first."""
    output_dir = tmp_path / "out"
    run_clip.main([*TINY, "--meta_controller", "--report_to", "tensorboard", "--output_dir", str(output_dir)])
    scalars = tensorboard_scalars(output_dir / "runs")
    assert [event.step for event in scalars["train/loss"]] == [1, 2, 3]
    multipliers = scalars.get("train/meta_lr_multiplier", [])
    assert [event.step for event in multipliers] == [1, 2, 3], f"no meta_lr_multiplier in {sorted(scalars)}"
    assert all(0 < event.value <= 1 for event in multipliers)  # the cautious start, x0.1, grows to x1 at most


def test_meta_controller_stops_a_diverging_run_before_writing_non_finite_weights(builtin_data, tmp_path):
    """The meta-controller's guard: a non-finite training loss stops the run before the optimizer step."""
    output_dir = tmp_path / "out"
    with pytest.raises(FloatingPointError, match="Training loss is"):
        run_clip.main(
            [*TINY, "--per_device_train_batch_size", "8", "--meta_controller", "--learning_rate", "1e30",
             "--max_grad_norm", "0", "--max_steps", "6", "--save_strategy", "steps", "--save_steps", "1",
             "--output_dir", str(output_dir)]  # fmt: skip
        )
    from safetensors.torch import load_file

    for weights in output_dir.glob("checkpoint-*/model.safetensors"):
        assert all(torch.isfinite(t).all() for t in load_file(weights).values()), weights.parent.name
    assert not (output_dir / "model.safetensors").exists()
