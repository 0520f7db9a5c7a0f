"""LoRA: the default targets, and examples/run_lora.py end to end on a tiny checkpoint published to a local Hub.

The run's adapter must reproduce the trained model on the base loaded as remote code (where mm is not installed),
merge into a plain remote-code checkpoint with the same outputs, and carry a card whose numbers are the run's.
"""

import contextlib
import io
import json
import math

import pytest
import torch
from huggingface_hub import ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results
from hub_server import LocalHub, point_clients_at
from peft import get_peft_model
from safetensors.torch import load_file, save_file

from configuration_mm import MMConfig
from modeling_mm import MMForConditionalGeneration, MMModel
from testers import TINY_RUN, run_clean, save_tiny_base
from training_mm.collators import ContrastiveCollator
from training_mm.hub import push_folder_to_hub
from training_mm.lora import DEFAULT_MODULES, build_lora_config, default_target_modules

import run_lora

# Retrieval on the tiny held-out split, far below the default gallery floor: measured anyway, to test the path.
TINY = [*TINY_RUN, "--learning_rate", "1e-2", "--min_retrieval_gallery", "1"]
BASE_REPO = "mm-tester/mm-tiny-base"
EMBEDDINGS = ("text_embeds", "image_embeds", "audio_embeds")


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A local Hub for this module, holding the tiny base checkpoint as `BASE_REPO`: the run loads its base by Hub
    id, as a finetuner would, so the adapter's card and config name a Hub model."""
    local_hub = LocalHub().start()
    with pytest.MonkeyPatch.context() as monkeypatch:
        point_clients_at(local_hub.url, monkeypatch, tmp_path_factory.mktemp("hf_hub_cache"))
        base = save_tiny_base(tmp_path_factory.mktemp("base") / "mm-tiny-base")
        push_folder_to_hub(base, BASE_REPO)
        yield local_hub
    local_hub.stop()


@pytest.fixture(scope="module")
def lora_run(hub, builtin_data, tmp_path_factory):
    """One run_lora.main on the base from the Hub, with a merged copy. Records the trained model's embeddings of a
    fixed batch right after training (before anything is saved or merged): what the saved files must reproduce."""
    root = tmp_path_factory.mktemp("lora")
    processor = run_lora.load_processor(BASE_REPO, MMConfig.from_pretrained(BASE_REPO))
    modalities = tuple(name for name in ("image", "audio") if name in builtin_data["test"].column_names)
    rows = [builtin_data["test"][i] for i in range(4)]
    inputs = ContrastiveCollator(processor, modalities, label_column=None, return_loss=False)(rows)
    save_file(inputs, root / "inputs.safetensors")
    expected = {}

    class RecordingTrainer(run_lora.Trainer):
        def train(self, *args, **kwargs):
            result = super().train(*args, **kwargs)
            self.model.eval()
            with torch.no_grad():
                out = self.model(**inputs)
            expected.update({name: out[name].contiguous() for name in EMBEDDINGS if out[name] is not None})
            return result

    stdout = io.StringIO()
    with pytest.MonkeyPatch.context() as monkeypatch, contextlib.redirect_stdout(stdout):
        monkeypatch.setattr(run_lora, "Trainer", RecordingTrainer)
        metrics = run_lora.main(
            [*TINY, "--model_name_or_path", BASE_REPO, "--output_dir", str(root / "adapter"),
             "--merge_output_dir", str(root / "merged"), "--lora_r", "4"]  # fmt: skip
        )
    save_file(expected, root / "expected.safetensors")
    return metrics, root, stdout.getvalue()


# ------------------------------------------------------------------------------------------------ target modules


def lora_targets(model, towers):
    peft_model = get_peft_model(model, build_lora_config(model, towers, r=2))
    return set(peft_model.targeted_module_names), peft_model


def test_default_targets_are_attention_and_mlp_of_the_chosen_towers_only():
    model = MMModel(MMConfig.from_preset("tiny"))
    linears = {name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    targets, peft_model = lora_targets(model, ("text", "vision"))
    expected = {
        name for name in linears
        if name.startswith(("text_model.", "vision_model.")) and name.rsplit(".", 1)[-1] in DEFAULT_MODULES
    }  # fmt: skip
    assert targets == expected and len(targets) == 2 * 2 * 6  # towers x layers x (q, k, v, out, fc1, fc2)
    # Projections, logit_scale, norms, embeddings and the untouched audio tower stay frozen.
    trainable = {name for name, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in name or ".lora_B." in name for name in trainable)
    assert not any("audio_model" in name for name in trainable)
    trainable_count, total = peft_model.get_nb_trainable_parameters()
    r = 2
    assert trainable_count == sum(r * (m.in_features + m.out_features) for n, m in model.named_modules() if n in targets)
    assert trainable_count < total


def test_captioning_targets_reach_the_decoders_self_and_cross_attention():
    model = MMForConditionalGeneration(MMConfig.from_preset("tiny"))
    targets, _ = lora_targets(model, ("decoder",))
    assert targets and all(name.startswith("decoder.layers.") for name in targets)
    assert {name.split(".")[3] for name in targets} == {"self_attn", "encoder_attn", "mlp"}
    vision_targets, _ = lora_targets(MMForConditionalGeneration(MMConfig.from_preset("tiny")), ("vision",))
    assert vision_targets and all(name.startswith("mm.vision_model.") for name in vision_targets)


def test_target_modules_override_replaces_the_defaults():
    model = MMModel(MMConfig.from_preset("tiny"))
    config = build_lora_config(model, None, r=2, target_modules=r"vision_model\..*\.(q_proj|v_proj)")
    targets = set(get_peft_model(model, config).targeted_module_names)
    assert targets == {f"vision_model.encoder.layers.{i}.self_attn.{name}" for i in range(2) for name in ("q_proj", "v_proj")}


def test_default_targets_reject_a_missing_tower_and_a_tower_with_other_layer_names():
    with pytest.raises(ValueError, match=r"decoder.*--towers"):
        default_target_modules(MMModel(MMConfig.from_preset("tiny")), ("decoder",))
    bert = dict(model_type="bert", vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                intermediate_size=64)  # fmt: skip
    model = MMModel(MMConfig.from_preset("tiny", text_config=bert))
    with pytest.raises(ValueError, match=r"text tower.*BertModel.*--target_modules"):
        default_target_modules(model, ("text", "vision"))


# ------------------------------------------------------------------------------------------------ run_lora.py


def test_run_prints_parameter_counts_and_writes_an_adapter_with_its_card(lora_run):
    metrics, root, stdout = lora_run
    trainable, total = metrics["trainable_parameters"], metrics["total_parameters"]
    assert 0 < trainable < total
    assert f"trainable params: {trainable:,} || all params: {total:,}" in stdout
    assert math.isfinite(metrics["train_loss"])

    adapter = root / "adapter"
    files = {path.name for path in adapter.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "processor_config.json",
            "tokenizer.json", "processing_mm.py"} <= files  # fmt: skip
    assert not files & {"model.safetensors", "training_args.bin", "config.json"}  # an adapter, not a checkpoint
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == BASE_REPO
    assert config["modules_to_save"] is None and config["r"] == 4
    assert config["auto_mapping"] == {"base_model_class": "AutoModel", "parent_library": "transformers"}

    retrieval = ("recall@1", "recall@5", "recall@10", "mAP", "nDCG@10")
    measured = {name: value for name, value in metrics.items() if name.split()[0] in retrieval}
    assert measured
    for folder, library in ((adapter, "peft"), (root / "merged", "transformers")):
        data = ModelCard.load(folder / "README.md").data
        assert (data.library_name, data.base_model) == (library, BASE_REPO)
        assert ("peft" in data.tags) == (library == "peft")
        # The card's model-index, parsed back into EvalResults, holds exactly what main() measured.
        _, results = model_index_to_eval_results(data.to_dict()["model-index"])
        assert {result.metric_type: result.metric_value for result in results} == measured
        assert {result.dataset_split for result in results} == {"test"}


def test_only_the_targeted_weights_change_when_the_adapter_is_merged(lora_run, hub, tmp_path):
    _, root, _ = lora_run
    base = load_file(hub.rebuild(BASE_REPO, tmp_path / "base") / "model.safetensors")
    merged = load_file(root / "merged" / "model.safetensors")
    assert base.keys() == merged.keys()
    changed = {name for name in base if not torch.equal(base[name], merged[name])}
    assert changed, "training changed nothing"
    for name in changed:  # LoRA updates weight matrices of the targets only: no bias, projection, logit_scale
        module, kind = name.rsplit(".", 1)
        assert kind == "weight" and module.rsplit(".", 1)[-1] in DEFAULT_MODULES, name
    assert "logit_scale" not in changed and not any("projection" in name for name in changed)


def test_adapter_and_merged_model_reproduce_the_trained_model_without_the_package(lora_run, hub, tmp_path):
    """Where mm is not installed: the base from the Hub as remote code plus the adapter gives the trained model's
    embeddings; merged and re-saved, and the run's own merged folder, too."""
    _, root, _ = lora_run
    code = f"""
import os
os.environ["HF_HUB_OFFLINE"] = "0"  # the local test Hub serves the base
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModel, AutoProcessor
root = {str(root)!r}
inputs, expected = load_file(root + "/inputs.safetensors"), load_file(root + "/expected.safetensors")

def check(model, what):
    assert "transformers_modules" in type(model.get_base_model() if hasattr(model, "get_base_model") else model).__module__
    with torch.no_grad():
        out = model.eval()(**inputs)
    for name, value in expected.items():
        torch.testing.assert_close(out[name], value, atol=1e-5, rtol=0, msg=lambda m: what + ": " + name + ": " + m)

base = AutoModel.from_pretrained({BASE_REPO!r}, trust_remote_code=True)
model = PeftModel.from_pretrained(base, root + "/adapter")
check(model, "PeftModel")
model.merge_and_unload().save_pretrained({str(tmp_path / "merged")!r})
check(AutoModel.from_pretrained({str(tmp_path / "merged")!r}, trust_remote_code=True), "merged and re-saved")
check(AutoModel.from_pretrained(root + "/merged", trust_remote_code=True), "--merge_output_dir")
processor = AutoProcessor.from_pretrained(root + "/adapter", trust_remote_code=True)
assert processor(text=["a red circle"])["input_ids"]  # the adapter repo prepares inputs on its own
print("LORA REPRODUCED")
"""
    assert "LORA REPRODUCED" in run_clean(code, cwd=tmp_path)


def test_auto_peft_model_loads_the_base_the_adapter_names(lora_run, hub, tmp_path):
    """`AutoPeftModel.from_pretrained(adapter, trust_remote_code=True)`: the base by the adapter's
    `base_model_name_or_path` (the Hub id) through transformers' AutoModel (its `auto_mapping`), as remote code."""
    _, root, _ = lora_run
    code = f"""
import os
os.environ["HF_HUB_OFFLINE"] = "0"  # the local test Hub serves the base
import torch
from peft import AutoPeftModel
from safetensors.torch import load_file
root = {str(root)!r}
inputs, expected = load_file(root + "/inputs.safetensors"), load_file(root + "/expected.safetensors")
model = AutoPeftModel.from_pretrained(root + "/adapter", trust_remote_code=True).eval()
assert "transformers_modules" in type(model.get_base_model()).__module__
with torch.no_grad():
    out = model(**inputs)
for name, value in expected.items():
    torch.testing.assert_close(out[name], value, atol=1e-5, rtol=0)
print("AUTO PEFT OK")
"""
    assert "AUTO PEFT OK" in run_clean(code, cwd=tmp_path)


def test_output_folders_are_never_overwritten_without_the_flag(lora_run):
    _, root, _ = lora_run
    before = (root / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns
    for folder in ("adapter", "merged"):
        args = ["--output_dir", str(root / "adapter") if folder == "adapter" else str(root / "fresh"),
                "--merge_output_dir", str(root / "merged")]  # fmt: skip
        with pytest.raises(FileExistsError, match="--overwrite_output_dir"):
            run_lora.main([*TINY, "--model_name_or_path", BASE_REPO, *args])
    assert (root / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns == before
    assert not (root / "fresh").exists()


@pytest.mark.parametrize(
    "args, match",
    [
        (["--towers", "text,decoder"], r"--towers 'text,decoder'.*text, vision, audio"),
        (["--task", "captioning"], r"no trained weights for .*'decoder'.*run_captioning.py"),
        (["--towers", "text", "--target_modules", "text_model.*q_proj"], "drop --towers"),
    ],
    ids=["tower-without-signal", "captioning-on-a-contrastive-checkpoint", "towers-and-target-modules"],
)
def test_bad_choices_fail_before_training(lora_run, tmp_path, args, match):
    with pytest.raises(ValueError, match=match):
        run_lora.main([*TINY, "--model_name_or_path", BASE_REPO, "--output_dir", str(tmp_path / "out"), *args])
    assert not (tmp_path / "out").exists()


def test_captioning_adapter_reproduces_the_trained_captioner(builtin_data, tmp_path):
    """--task captioning on a (tiny, untrained) captioning checkpoint: LoRA on the decoder and the vision tower, and
    base + adapter gives the trained model's next-token logits where mm is not installed."""
    base = save_tiny_base(tmp_path / "captioner", MMForConditionalGeneration)
    processor = run_lora.load_processor(base, MMConfig.from_pretrained(base))
    rows = [builtin_data["test"][i] for i in range(2)]
    inputs = run_lora.CaptioningCollator(processor, "image")(rows)
    inputs.pop("labels")
    expected = {}

    class RecordingTrainer(run_lora.Trainer):
        def train(self, *args, **kwargs):
            result = super().train(*args, **kwargs)
            with torch.no_grad():
                expected["logits"] = self.model.eval()(**inputs).logits.contiguous()
            return result

    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(run_lora, "Trainer", RecordingTrainer)
        metrics = run_lora.main(
            [*TINY, "--task", "captioning", "--model_name_or_path", str(base), "--output_dir", str(tmp_path / "adapter"),
             "--max_eval_samples", "4", "--generation_max_new_tokens", "4"]  # fmt: skip
        )
    assert {"bleu", "cider", "baseline bleu", "baseline cider"} <= set(metrics)
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["target_modules"] == r"(decoder|mm\.vision_model)\..*\.(q_proj|k_proj|v_proj|out_proj|fc1|fc2)"
    assert config["auto_mapping"]["base_model_class"] == "AutoModelForImageTextToText"
    card = ModelCard.load(tmp_path / "adapter" / "README.md").data
    assert card.pipeline_tag == "image-to-text"
    assert {r.metric_type: r.metric_value for r in card.eval_results} == {"bleu": metrics["bleu"], "cider": metrics["cider"]}

    save_file({**inputs, **expected}, tmp_path / "tensors.safetensors")
    code = f"""
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText
tensors = load_file({str(tmp_path / "tensors.safetensors")!r})
expected = tensors.pop("logits")
base = AutoModelForImageTextToText.from_pretrained({str(base)!r}, trust_remote_code=True)
model = PeftModel.from_pretrained(base, {str(tmp_path / "adapter")!r}).eval()
with torch.no_grad():
    torch.testing.assert_close(model(**tensors).logits, expected, atol=1e-5, rtol=0)
print("CAPTIONER REPRODUCED")
"""
    assert "CAPTIONER REPRODUCED" in run_clean(code, cwd=tmp_path)
