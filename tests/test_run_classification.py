"""examples/run_classification.py end to end, called as `main([...])` on tiny settings: the built-in fusion tasks from
an MMModel checkpoint with staged training, then the saved folder classifying through the stock and custom pipelines
where mm is not installed; a user folder with one label column; streamed user data; LoRA on a classifier
(examples/run_lora.py --task classification)."""

import json
import re

import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file, save_file
from testers import (
    NUM_EVAL,
    NUM_TRAIN,
    TINY_RUN,
    mm_cache_in,
    record_meta_controllers,
    require_espeak,
    run_clean,
    save_tiny_base,
    tiny_processor,
    write_folder,
)

import run_classification
import run_lora
from configuration_mm import MMConfig
from modeling_mm import MMForClassification
from training_mm.classification import ClassificationCollator, infer_tasks
from training_mm.fusion_data import FUSION_TASKS, build_fusion_dataset

TINY = [*TINY_RUN, "--preset", "tiny", "--per_device_train_batch_size", "8", "--max_steps", "2"]


@pytest.fixture(scope="module")
def fusion_data(tmp_path_factory):
    require_espeak()
    with mm_cache_in(tmp_path_factory.mktemp("mm_cache")):
        yield build_fusion_dataset(num_train=NUM_TRAIN, num_validation=NUM_EVAL, num_test=NUM_EVAL, image_size=32)


def test_builtin_tasks_from_a_checkpoint_with_frozen_towers_then_pipelines_without_mm(fusion_data, tmp_path, capsys):
    base = save_tiny_base(tmp_path / "base")
    output_dir = tmp_path / "out"
    metrics = run_classification.main(
        [*TINY, "--model_name_or_path", str(base), "--freeze_towers_steps", "5", "--fusion_type", "cross",
         "--output_dir", str(output_dir)]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert "match accuracy" in printed and "text + image + audio" in printed and "\naudio " in printed
    for key in ("match accuracy", "match macro_f1", "colours mAP", "colours micro_f1", "count rmse", "count mae"):
        assert 0 <= metrics[key] < float("inf"), key
    assert "match accuracy [image]" in metrics and "count rmse [text + audio]" in metrics
    assert json.loads((output_dir / "eval_results.json").read_text())["eval_match accuracy"] == metrics["match accuracy"]

    config = json.loads((output_dir / "config.json").read_text())
    assert set(config["tasks"]) == set(FUSION_TASKS) and config["default_task"] == "match"
    assert config["fusion_encoder_config"]["fusion_type"] == "cross"
    # Staged training: 2 steps with the towers frozen for 5 leave them exactly as the checkpoint had them.
    trained, started = load_file(output_dir / "model.safetensors"), load_file(base / "model.safetensors")
    for key, value in started.items():
        torch.testing.assert_close(trained[f"mm.{key}"], value, rtol=0, atol=0)
    assert any(key.startswith("fusion.") for key in trained)
    card = ModelCard.load(output_dir / "README.md")
    assert "| colours | multi_label_classification: blue, green, orange, purple, red, yellow |" in card.text
    assert "run_lora.py --model_name_or_path out --task classification" in card.text and "run_clip" not in card.text
    results = {(r.metric_name, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert results[("match accuracy", "accuracy")] == metrics["match accuracy"]
    assert results[("count rmse", "rmse")] == metrics["count rmse"] and len(results) == 7
    assert card.data.pipeline_tag == "image-classification"
    # The card's usage snippets, run as a reader would (with the saved folder, an image and a clip of the data).
    usage = card.text.split("## How to use")[1].split("### With the example scripts")[0]
    snippets = "\n".join(re.findall(r"```python\n(.*?)```", usage, flags=re.S))

    image, clip = tmp_path / "image.png", tmp_path / "clip.wav"
    row = fusion_data["test"][0]
    row["image"].save(image)
    clip.write_bytes(row["audio"]["bytes"])
    code = f"""
import soundfile
from transformers import pipeline
folder = {str(output_dir)!r}
# The stock pipelines load the model through AutoModelForImageClassification / AudioClassification /
# SequenceClassification, the custom one through AutoModelForSequenceClassification.
labels = {{"0", "1"}}  # the default task, match
out = pipeline("image-classification", model=folder, trust_remote_code=True)({str(image)!r})
assert {{o["label"] for o in out}} == labels, out
wave, rate = soundfile.read({str(clip)!r}, dtype="float32")  # the stock pipeline reads files with ffmpeg
out = pipeline("audio-classification", model=folder, trust_remote_code=True)(wave)
assert {{o["label"] for o in out}} == labels, out
out = pipeline("text-classification", model=folder, trust_remote_code=True)({row["caption"]!r})
assert out[0]["label"] in labels, out
clf = pipeline("multimodal-classification", model=folder, trust_remote_code=True)
both = clf({{"image": {str(image)!r}, "text": {row["caption"]!r}, "audio": {str(clip)!r}}})
assert set(both) == {{"match", "colours", "count"}} and isinstance(both["count"]["score"], float), both
assert {{o["label"] for o in both["colours"]}} == {{"red", "green", "blue", "yellow", "purple", "orange"}}
one = clf([{{"text": {row["caption"]!r}}}, {{"image": {str(image)!r}}}])
assert len(one) == 2 and set(one[1]) == set(both), one
waveform = wave
exec({snippets.replace('"out"', repr(str(output_dir))).replace('"photo.jpg"', repr(str(image)))!r})
print("PIPELINES OK")
"""
    assert "PIPELINES OK" in run_clean(code, cwd=tmp_path)


def test_user_folder_with_one_label_column_as_classes(fusion_data, tmp_path):
    """A folder with metadata.jsonl; integer-valued counts taken as classes (--problem_type), one head; a label
    unseen in training is refused by `encode_labels` (tests/test_fusion.py)."""
    folder = tmp_path / "data"
    for split in ("train", "validation", "test"):
        write_folder(fusion_data[split], folder / split)
    output_dir = tmp_path / "out"
    metrics = run_classification.main(
        [*TINY, "--dataset_name", str(folder), "--label_column", "count", "--problem_type",
         "single_label_classification", "--fusion_type", "late", "--eval_strategy", "steps", "--eval_steps", "2",
         "--output_dir", str(output_dir)]
    )  # fmt: skip
    assert "count accuracy" in metrics and "count macro_f1" in metrics and "eval_loss" in metrics
    config = json.loads((output_dir / "config.json").read_text())
    assert config["problem_type"] == "single_label_classification"
    assert set(config["id2label"].values()) <= {"1", "2", "3", "4", "5", "6", "7", "8"}



def test_meta_controller_trains_the_classifier(fusion_data, tmp_path, monkeypatch):
    """--meta_controller: the run trains under MetaControllerCallback, built as run_clip builds it from scratch."""
    import training_mm.meta_controller as meta_controller

    built = record_meta_controllers(monkeypatch)
    run_classification.main(
        [*TINY, "--meta_controller", "--learning_rate", "1e-3", "--output_dir", str(tmp_path / "out")]
    )  # fmt: skip
    assert len(built) == 1 and built[0].config["min_update_ratio"] == meta_controller.MIN_UPDATE_RATIO
    assert built[0].peak_lr == pytest.approx(1e-3)  # it saw the run's optimizer at on_train_begin


def test_streamed_user_data_and_a_held_out_class_unseen_in_training(fusion_data, tmp_path):
    """--streaming reads a user folder as it trains (classes from the streamed training rows); a held-out label the
    training split never has is refused before training, naming the split, the column and the value."""
    folder = tmp_path / "data"
    for split in ("train", "validation", "test"):
        rows = fusion_data[split].map(lambda row, i: {"kind": "ab"[i % 2] if split != "test" or i else "c"}, with_indices=True)
        write_folder(rows, folder / split)
    with pytest.raises(ValueError, match=r"The test split: Label 'c' in column 'kind' is not one of the classes"):
        run_classification.main([*TINY, "--dataset_name", str(folder), "--label_column", "kind",
                                 "--output_dir", str(tmp_path / "refused")])  # fmt: skip

    output_dir = tmp_path / "out"
    metrics = run_classification.main(
        [*TINY, "--dataset_name", str(folder), "--streaming", "--label_column", "match", "--fusion_type", "gated",
         "--output_dir", str(output_dir)]
    )  # fmt: skip
    assert 0 <= metrics["match accuracy"] <= 1 and "match auroc [text + image]" in metrics
    config = json.loads((output_dir / "config.json").read_text())
    assert config["id2label"] == {"0": "0", "1": "1"} and config["tasks"]["match"]["labels"] == ["0", "1"]


def save_tiny_classifier(folder, train_split):
    """A tiny untrained classifier with the built-in fusion tasks and its processor, as run_classification.py saves."""
    processor = tiny_processor()
    tokenizer = processor.tokenizer
    special = {f"{name}_token_id": getattr(tokenizer, f"{name}_token_id") for name in ("pad", "bos", "eos")}
    config = MMConfig.from_preset(
        "tiny",
        text_config={"vocab_size": len(tokenizer), **special},
        tasks=infer_tasks(train_split, list(FUSION_TASKS)),
        default_task="match",
    )
    torch.manual_seed(0)
    MMForClassification(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def test_lora_on_a_classifier_trains_fusion_and_heads_in_full_and_the_adapter_reloads(fusion_data, tmp_path):
    """run_lora.py --task classification: LoRA on the towers, the fusion layers and every task head trained in full
    (`modules_to_save`); the loss falls, and where mm is not installed base + adapter gives the trained logits."""
    base = save_tiny_classifier(tmp_path / "classifier", fusion_data["train"])
    processor = run_lora.load_processor(base, MMConfig.from_pretrained(base))
    inputs = ClassificationCollator(processor, ("text", "image", "audio"))([fusion_data["test"][i] for i in range(4)])
    recorded = {}

    class RecordingTrainer(run_lora.Trainer):
        def train(self, *args, **kwargs):
            result = super().train(*args, **kwargs)
            recorded["losses"] = [entry["loss"] for entry in self.state.log_history if "loss" in entry]
            with torch.no_grad():
                out = self.model.eval()(**inputs)
            recorded.update({task: logits.contiguous() for task, logits in out.task_logits.items()})
            return result

    adapter = tmp_path / "adapter"
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(run_lora, "Trainer", RecordingTrainer)
        metrics = run_lora.main(
            [*TINY_RUN, "--task", "classification", "--model_name_or_path", str(base), "--output_dir", str(adapter),
             "--max_steps", "6", "--per_device_train_batch_size", "8", "--learning_rate", "5e-3", "--lora_r", "4"]
        )  # fmt: skip
    losses = recorded.pop("losses")
    assert len(losses) == 6 and sum(losses[-2:]) < 0.8 * sum(losses[:2]), losses
    assert {"match accuracy", "colours mAP", "count rmse", "baseline match accuracy"} <= set(metrics)

    config = json.loads((adapter / "adapter_config.json").read_text())
    assert sorted(config["modules_to_save"]) == ["classifier.colours", "classifier.count", "classifier.match", "fusion"]
    assert config["target_modules"] == r"(mm\.text_model|mm\.vision_model|mm\.audio_model)\..*\.(q_proj|k_proj|v_proj|out_proj|fc1|fc2)"
    assert config["auto_mapping"]["base_model_class"] == "AutoModelForSequenceClassification"
    weights = load_file(adapter / "adapter_model.safetensors")
    started = load_file(base / "model.safetensors")
    head = "base_model.model.classifier.match.weight"
    assert not torch.equal(weights[head], started["classifier.match.weight"])  # the head trained in full
    assert any(key.startswith("base_model.model.fusion.") for key in weights)
    card = ModelCard.load(adapter / "README.md")
    assert card.data.pipeline_tag == "image-classification" and "| match | single_label_classification: 0, 1 |" in card.text
    results = {result.metric_name: result.metric_value for result in card.data.eval_results}
    assert results["match accuracy"] == metrics["match accuracy"]

    save_file({**inputs, **{f"expected.{task}": value for task, value in recorded.items()}}, tmp_path / "t.safetensors")
    code = f"""
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification
tensors = load_file({str(tmp_path / "t.safetensors")!r})
expected = {{name.split(".")[1]: tensors.pop(name) for name in list(tensors) if name.startswith("expected.")}}
base = AutoModelForSequenceClassification.from_pretrained({str(base)!r}, trust_remote_code=True)
model = PeftModel.from_pretrained(base, {str(adapter)!r}).eval()
with torch.no_grad():
    got = model(**tensors).task_logits
for task, logits in expected.items():
    torch.testing.assert_close(got[task], logits, atol=1e-5, rtol=0)
print("CLASSIFIER ADAPTER REPRODUCED")
"""
    assert "CLASSIFIER ADAPTER REPRODUCED" in run_clean(code, cwd=tmp_path)
