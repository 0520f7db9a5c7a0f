"""Model card and Hub upload: what a user sees on the Hub is what the run produced, byte for byte.

Uploads go to the local Hub of `hub_server.py` (127.0.0.1), through the same `huggingface_hub` calls a real
push makes; transformers' own `push_to_hub` is checked against it too, since mm models push that way.
"""

import shutil
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
import yaml
from huggingface_hub import HfApi, ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results
from hub_server import LocalHub
from safetensors.numpy import save_file

from configuration_mm import MMConfig
from modeling_mm import MMForConditionalGeneration, MMModel
import training_mm.hub as hub_module
from training_mm.hub import SYNTHETIC_DATASET, CardFacts, describe_model, push_folder_to_hub, write_model_card

METRICS = {"recall@1 image->text": 0.4375, "recall@1 text->image": np.float32(0.40625), "eval_loss": 1.0986}
HYPERPARAMETERS = {"learning_rate": 5e-4, "per_device_train_batch_size": 8, "num_train_epochs": 2, "seed": 0}


def card_facts(**overrides):
    kwargs = dict(
        model_name="mm-tiny",
        metrics=METRICS,
        task_type="zero-shot-image-classification",
        dataset_name="mm synthetic",
        dataset_type=SYNTHETIC_DATASET,
        dataset_split="validation",
        hyperparameters=HYPERPARAMETERS,
        model_description={"Architecture": "MMModel", "Parameters": "12,345"},
    )
    return CardFacts(**{**kwargs, **overrides})


def make_export_folder(path, weights_seed=0):
    """A folder shaped like an mm export: safetensors weights, config, remote code, processor file, card."""
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(weights_seed)
    save_file({"text.weight": rng.standard_normal((8, 4)).astype(np.float32)}, str(path / "model.safetensors"))
    (path / "config.json").write_text('{"model_type": "mm", "auto_map": {"AutoModel": "modeling_mm.MMModel"}}\n')
    (path / "modeling_mm.py").write_text("class MMModel:\n    pass\n")
    (path / "preprocessor_config.json").write_text('{"image_size": 32}\n')
    write_model_card(path, card_facts())
    return path


def local_files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def hub_files(hub, repo_id):
    files = hub.files(repo_id)
    files.pop(".gitattributes")  # every Hub repo starts with one
    return files


def test_push_folder_uploads_every_file_byte_for_byte(hub_server, tmp_path):
    folder = make_export_folder(tmp_path / "export")
    commit = push_folder_to_hub(folder, "mm-org/mm-tiny")
    assert hub_files(hub_server, "mm-org/mm-tiny") == local_files(folder)
    assert commit.commit_url.startswith(hub_server.url)
    assert hub_server.unhandled == []


def test_push_into_an_existing_empty_repo_needs_no_overwrite(hub_server, tmp_path):
    HfApi().create_repo("mm-org/empty")
    folder = make_export_folder(tmp_path / "export")
    push_folder_to_hub(folder, "mm-org/empty")
    assert hub_files(hub_server, "mm-org/empty") == local_files(folder)


def test_push_refuses_to_overwrite_a_repo_with_files_unless_asked(hub_server, tmp_path):
    first = make_export_folder(tmp_path / "first", weights_seed=0)
    push_folder_to_hub(first, "mm-org/mm-tiny")
    commits_before = hub_server.commits("mm-org/mm-tiny")

    second = make_export_folder(tmp_path / "second", weights_seed=1)
    (second / "modeling_mm.py").unlink()
    with pytest.raises(FileExistsError, match=r"mm-org/mm-tiny.*overwrite=True"):
        push_folder_to_hub(second, "mm-org/mm-tiny")
    assert hub_server.commits("mm-org/mm-tiny") == commits_before
    assert hub_files(hub_server, "mm-org/mm-tiny") == local_files(first)

    push_folder_to_hub(second, "mm-org/mm-tiny", overwrite=True)
    # The repo now mirrors the second folder: new weights, and no stale file left from the first push.
    assert hub_files(hub_server, "mm-org/mm-tiny") == local_files(second)
    assert ".gitattributes" in hub_server.files("mm-org/mm-tiny")


def test_push_rejects_an_empty_or_missing_folder(hub_server, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder"):
        push_folder_to_hub(tmp_path / "missing", "mm-org/x")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no files"):
        push_folder_to_hub(tmp_path / "empty", "mm-org/x")
    assert hub_server.repo_ids() == []


def test_transformers_push_to_hub_uploads_what_save_pretrained_writes(hub_server, tmp_path):
    # mm models push through the same PushToHubMixin: if this round-trips, theirs does too.
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
    )
    model = transformers.BertModel(config)
    model.push_to_hub("mm-org/tiny-bert")
    model.save_pretrained(tmp_path / "local")

    pushed = hub_files(hub_server, "mm-org/tiny-bert")
    assert pushed.pop("README.md").startswith(b"---\n")  # push_to_hub adds a default card
    assert pushed == local_files(tmp_path / "local")
    assert hub_server.unhandled == []


def read_front_matter(readme_path):
    text = readme_path.read_text(encoding="utf-8")
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_model_card_metadata_holds_the_measured_metrics(tmp_path):
    write_model_card(tmp_path, card_facts())
    expected = {name: float(value) for name, value in METRICS.items()}

    data = ModelCard.load(tmp_path / "README.md").data
    _, results = model_index_to_eval_results(read_front_matter(tmp_path / "README.md")["model-index"])
    for parsed in (data.eval_results, results):
        assert {r.metric_type: r.metric_value for r in parsed} == expected
        assert {r.metric_name for r in parsed} == set(METRICS)
        assert {(r.task_type, r.dataset_type, r.dataset_name, r.dataset_split) for r in parsed} == {
            ("zero-shot-image-classification", SYNTHETIC_DATASET, "mm synthetic", "validation")
        }
    assert {"custom_code", "mm", "text", "image", "audio"} <= set(data.tags)
    assert (data.license, data.library_name) == ("apache-2.0", "transformers")
    assert data.pipeline_tag == "zero-shot-image-classification"
    assert data.datasets is None  # synthetic data is no Hub dataset
    assert data.base_model is None


def test_model_card_tables_show_the_run_values(tmp_path):
    card = write_model_card(tmp_path, card_facts(repo_id="mm-org/mm-tiny"))
    text = card.text
    for name in METRICS:
        assert f"| {name} |" in text
    assert "| 0.4375 |" in text
    for name, value in HYPERPARAMETERS.items():
        assert f"| {name} | {value} |" in text
    assert "| Parameters | 12,345 |" in text
    assert "trained on synthetic data" in text
    assert 'AutoModel.from_pretrained("mm-org/mm-tiny", trust_remote_code=True)' in text
    for task in ("zero-shot-image-classification", "zero-shot-audio-classification"):
        assert f'pipeline("{task}"' in text
    assert "examples/run_clip.py" in text


def test_model_card_without_metrics_has_no_model_index(tmp_path):
    write_model_card(tmp_path, card_facts(metrics=None, dataset_type="mm-org/captions"))
    metadata = read_front_matter(tmp_path / "README.md")
    assert "model-index" not in metadata
    assert metadata["datasets"] == ["mm-org/captions"]
    assert "No evaluation results were recorded" in (tmp_path / "README.md").read_text()


def test_adapter_card_names_its_base_model_and_peft(tmp_path):
    facts = card_facts(
        task_type="image-to-text", is_adapter=True, base_model="mm-org/mm-base", modalities=("text", "image")
    )
    card = write_model_card(tmp_path, facts)
    data = ModelCard.load(tmp_path / "README.md").data
    assert data.base_model == "mm-org/mm-base"
    assert data.library_name == "peft"
    assert {"peft", "lora", "custom_code", "text", "image"} <= set(data.tags) and "audio" not in data.tags
    assert data.pipeline_tag == "image-to-text"
    assert 'PeftModel.from_pretrained(base, "mm-tiny")' in card.text
    assert 'pipeline("image-to-text"' not in card.text  # an adapter alone cannot back a pipeline


@pytest.mark.parametrize(
    "overrides, error, match",
    [
        (dict(is_adapter=True), ValueError, "base_model"),
        (dict(metrics={"recall@1": float("nan")}), ValueError, "recall@1"),
        (dict(metrics={"recall@1": "high"}), ValueError, "recall@1"),
        (dict(modalities=("text", "video")), ValueError, "video"),
        (dict(template_path="missing_template.md"), FileNotFoundError, "reinstall the package"),
    ],
)
def test_model_card_rejects_bad_input(tmp_path, overrides, error, match):
    template_path = overrides.pop("template_path", None)
    with pytest.raises(error, match=match):
        write_model_card(tmp_path, card_facts(**overrides), template_path)
    assert not (tmp_path / "README.md").exists()


@pytest.mark.parametrize("model_class", [MMModel, MMForConditionalGeneration])
def test_describe_model_lists_the_towers_the_model_has(model_class):
    """Every MMConfig holds a decoder config, but only MMForConditionalGeneration builds a decoder."""
    model = model_class(MMConfig.from_preset("tiny"))
    rows = describe_model(model)
    assert rows["Architecture"] == model_class.__name__
    assert rows["Parameters"] == f"{sum(p.numel() for p in model.parameters()):,}"
    for tower in ("Text tower", "Vision tower", "Audio tower"):
        assert rows[tower].startswith("layers 2, hidden 32, heads 4, MLP 64")
    assert "image px 32, patch 8" in rows["Vision tower"]
    assert ("Decoder tower" in rows) == (model_class is MMForConditionalGeneration)
    assert rows["Embedding size"] == "32"


def test_local_hub_stops_listening_when_stopped():
    hub = LocalHub().start()
    port = int(hub.url.rsplit(":", 1)[1])
    socket.create_connection(("127.0.0.1", port), timeout=1).close()
    hub.stop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_a_regular_install_ships_the_card_template(tmp_path, monkeypatch):
    """Outside a checkout (a wheel install), write_model_card finds model_card.md in <prefix>/share/mm/."""
    repo = Path(__file__).resolve().parents[1]
    source = tmp_path / "source"  # a copy, so that the build leaves nothing in the checkout
    source.mkdir()
    for name in ("setup.py", "README.md", "model_card.md"):
        shutil.copy(repo / name, source)
    for package in ("configuration_mm", "modeling_mm", "processing_mm", "training_mm", "serving_mm"):
        shutil.copytree(repo / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), "."],
        cwd=source,
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("mm-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = [name for name in archive.namelist() if name.endswith("/data/share/mm/model_card.md")]
        assert len(shipped) == 1
        assert archive.read(shipped[0]) == (repo / "model_card.md").read_bytes()
    assert Path(sys.prefix, "share", "mm", "model_card.md") in hub_module._TEMPLATE_CANDIDATES

    # With no checkout next to the package, the installed copy is the one used.
    installed = tmp_path / "prefix" / "share" / "mm" / "model_card.md"
    installed.parent.mkdir(parents=True)
    installed.write_bytes((repo / "model_card.md").read_bytes().replace(b"## ", b"## [installed] ", 1))
    monkeypatch.setattr(hub_module, "_TEMPLATE_CANDIDATES", (tmp_path / "no-checkout" / "model_card.md", installed))
    folder = tmp_path / "model"
    folder.mkdir()
    assert "## [installed] " in write_model_card(folder, card_facts()).text
