"""Sharing a trained mm checkpoint on the Hugging Face Hub: its model card, and the upload.

`write_model_card` renders the repository's `model_card.md` with a `CardFacts` into the export folder's README.md,
with the Hub metadata (license, tags, pipeline tag, base model, and a `model-index` holding the metrics the run
measured). `push_folder_to_hub` uploads that folder, refusing to overwrite a repository that already
has files unless asked to.

Example:
```python
>>> from training_mm.hub import CardFacts, describe_model, push_folder_to_hub, write_model_card
>>> model.save_pretrained("out"); processor.save_pretrained("out")
>>> facts = CardFacts(
...     model_name="mm-small", task_type="zero-shot-image-classification", model_description=describe_model(model),
...     metrics={"recall@1 image->text": 0.41}, dataset_name="mm synthetic", dataset_type="synthetic",
...     hyperparameters={"learning_rate": 5e-4},
... )
>>> write_model_card("out", facts)
>>> push_folder_to_hub("out", "my-org/mm-small")
```
"""

import logging
import math
import re
import sys
from dataclasses import dataclass
from importlib import metadata
from numbers import Real
from pathlib import Path

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData, constants
from huggingface_hub.errors import RepositoryNotFoundError
from transformers import PreTrainedConfig

from configuration_mm.configuration_mm import MODALITIES

logger = logging.getLogger(__name__)

# The repository's `model_card.md`: next to this package in a checkout (`pip install -e .`), and in
# `<prefix>/share/mm/` after a regular install (setup.py ships it as a data file).
_TEMPLATE_CANDIDATES = (
    Path(__file__).resolve().parent.parent / "model_card.md",
    Path(sys.prefix) / "share" / "mm" / "model_card.md",
)
LICENSE = "apache-2.0"
# `dataset_type` of the package's built-in synthetic data: the card then says so, and lists no Hub dataset.
SYNTHETIC_DATASET = "synthetic"
# Tower attributes worth a line in the card, in reading order (those a config lacks are skipped).
_TOWER_FIELDS = (
    ("num_hidden_layers", "layers"),
    ("hidden_size", "hidden"),
    ("num_attention_heads", "heads"),
    ("intermediate_size", "MLP"),
    ("vocab_size", "vocab"),
    ("max_position_embeddings", "max tokens"),
    ("image_size", "image px"),
    ("patch_size", "patch"),
    ("num_mel_bins", "mel bins"),
    ("max_source_positions", "audio positions"),
)
_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")
# The Auto class the card's usage code loads a checkpoint of each task with (AutoModel for the contrastive ones).
AUTO_CLASSES = {
    "image-to-text": "AutoModelForImageTextToText",
    "automatic-speech-recognition": "AutoModelForSpeechSeq2Seq",
}
# The towers a checkpoint's card lists, by the task `model.push_to_hub` is told (captioners read one modality).
_TASK_MODALITIES = {"image-to-text": ("text", "image"), "automatic-speech-recognition": ("text", "audio")}


def describe_model(model):
    """The card's "Model summary" rows, read from the model itself: class, parameter counts and, per tower,
    its size. Works on any `PreTrainedModel` (a tower is each of `config.sub_configs` that the model built) and on
    a PEFT model.

    Example:
    ```python
    >>> describe_model(model)
    {'Architecture': 'MMModel', 'Parameters': '1,234,567', 'Text tower': '2 layers, hidden 32, ...', ...}
    ```
    """
    config = model.config
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT wraps the model
    rows = {"Architecture": type(base).__name__, "Parameters": f"{total:,}"}
    if trainable != total:
        rows["Trainable parameters"] = f"{trainable:,}"
    towers = _built_sub_configs(base, config)
    for name in towers:
        rows[f"{name.removesuffix('_config').replace('_', ' ').capitalize()} tower"] = _describe_tower(getattr(config, name))
    if not towers:
        rows["Encoder"] = _describe_tower(config)
    if getattr(config, "projection_dim", None) is not None:
        rows["Embedding size"] = str(config.projection_dim)
    return rows


def _built_sub_configs(model, config):
    """The names of `config`'s sub-configs that some submodule of `model` was built from. A config may describe
    more than its model builds: every `MMConfig` holds a `decoder_config`, but only `MMForConditionalGeneration`
    has a decoder. Equality, not only identity, counts: a tower loaded on its own holds a copy of its config."""
    parts = [module.config for module in model.modules() if module is not model and _has_config(module)]
    parts = list({id(part): part for part in parts}.values())  # every layer of a tower shares its config
    return [
        name
        for name in getattr(config, "sub_configs", {})
        if (sub := getattr(config, name, None)) is not None and any(sub is part or sub == part for part in parts)
    ]


def _has_config(module):
    return isinstance(getattr(module, "config", None), PreTrainedConfig)


def _describe_tower(config):
    return ", ".join(f"{label} {getattr(config, attr)}" for attr, label in _TOWER_FIELDS if hasattr(config, attr))


@dataclass
class CardFacts:
    """What a model card says about a checkpoint and the run that made it; checked when made.

    Args:
        model_name: the card's title and the `model-index` name.
        task_type: the checkpoint's task and the card's `pipeline_tag`, e.g. "zero-shot-image-classification",
            "zero-shot-audio-classification", "image-to-text", "automatic-speech-recognition".
        model_description (`dict[str, str]`): the summary table, normally `describe_model(model)`.
        metrics (`dict[str, float]` or None): what the run measured, e.g. `{"recall@1 image->text": 0.41}`.
            Each entry becomes one `EvalResult` (metric type and name = the key) and one table row.
        dataset_name, dataset_type: a readable name and the Hub dataset id (or `SYNTHETIC_DATASET`, or a local
            path) of the data trained and evaluated on. Only a Hub id is listed in the `datasets` metadata. None
            (`model.push_to_hub`, which knows the model but not its run): the card says the data was not recorded.
        dataset_split: the split the metrics were measured on, if any.
        evaluation_note: a sentence on what the evaluation measured on, or why it did not (e.g. the retrieval
            gallery's size, `training_mm.retrieval.RetrievalGallery.note`), shown above the results.
        evaluation_protocol: how the metrics were measured, in a line (e.g. `training_mm.retrieval.PROTOCOL`); the
            `metric_config` of each `model-index` result, next to its dataset and split.
        hyperparameters (`dict`): rendered as the hyper-parameter table, e.g. from `TrainingArguments`.
        base_model: the Hub id the model was finetuned from; required for adapters.
        is_adapter: a PEFT/LoRA adapter: adds the `peft`/`lora` tags and a `library_name` of "peft".
        modalities: the towers the checkpoint has, each tagged.
        repo_id: the Hub id used in the card's code snippets (defaults to `model_name`).
        classification_tasks (`dict`, *optional*): an `MMForClassification`'s `config.task_specs()`; the card then
            lists each task and its labels and shows the classification snippets.
    """

    model_name: str
    task_type: str
    model_description: dict
    metrics: dict | None = None
    dataset_name: str | None = None
    dataset_type: str | None = None
    dataset_split: str | None = None
    evaluation_note: str | None = None
    evaluation_protocol: str | None = None
    hyperparameters: dict | None = None
    base_model: str | None = None
    is_adapter: bool = False
    modalities: tuple = MODALITIES
    repo_id: str | None = None
    classification_tasks: dict | None = None

    def __post_init__(self):
        if self.is_adapter and not self.base_model:
            raise ValueError("An adapter's card needs base_model: the Hub id of the model the adapter attaches to.")
        unknown = [m for m in self.modalities if m not in MODALITIES]
        if unknown or not self.modalities:
            raise ValueError(
                f"modalities must be a non-empty subset of {list(MODALITIES)}, got {list(self.modalities)!r}."
            )
        self.metrics = _checked_metrics(self.metrics or {})


def write_model_card(folder, facts, template_path=None):
    """Renders `model_card.md` (or `template_path`) with `facts` (a `CardFacts`) into `folder/README.md`, which must
    be an existing folder, and returns the `ModelCard`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"Cannot write a model card into {folder}: not a folder; save the model there first.")
    if template_path is None:
        template_path = next((path for path in _TEMPLATE_CANDIDATES if path.is_file()), _TEMPLATE_CANDIDATES[0])
    template_path = Path(template_path)
    if not template_path.is_file():
        raise FileNotFoundError(
            f"Model card template not found at {template_path}. It is `model_card.md` at the mm repository's root, "
            f"installed to {_TEMPLATE_CANDIDATES[1].parent}: reinstall the package (`pip install .` or "
            "`pip install -e .` from its repository) or pass template_path=."
        )

    tags = ["mm", "custom_code", *facts.modalities] + (["peft", "lora"] if facts.is_adapter else [])
    eval_results = [
        EvalResult(
            task_type=facts.task_type,
            dataset_type=facts.dataset_type,
            dataset_name=facts.dataset_name,
            dataset_split=facts.dataset_split,
            **_metric_of(name, facts.classification_tasks),
            metric_name=name,
            metric_value=value,
            metric_config=facts.evaluation_protocol,
        )
        for name, value in facts.metrics.items()
    ]
    hub_dataset = facts.dataset_type and facts.dataset_type != SYNTHETIC_DATASET and _is_hub_id(facts.dataset_type)
    card_data = ModelCardData(
        model_name=facts.model_name,
        license=LICENSE,
        library_name="peft" if facts.is_adapter else "transformers",
        pipeline_tag=facts.task_type,
        tags=tags,
        datasets=[facts.dataset_type] if hub_dataset else None,
        base_model=facts.base_model if facts.base_model and _is_hub_id(facts.base_model) else None,
        eval_results=eval_results or None,
    )
    card = ModelCard.from_template(
        card_data,
        template_path=str(template_path),
        model_name=facts.model_name,
        repo=facts.repo_id or facts.model_name,
        modalities=list(facts.modalities),
        task_type=facts.task_type,
        auto_class=_auto_class(facts),
        task_rows=[
            (_cell(name), _cell(f"{spec['problem_type']}: {', '.join(spec['labels'] or []) or spec['num_labels']}"))
            for name, spec in (facts.classification_tasks or {}).items()
        ],
        is_adapter=facts.is_adapter,
        base_model=facts.base_model,
        base_model_url=f"{constants.ENDPOINT}/{facts.base_model}" if facts.base_model else None,
        synthetic_data=facts.dataset_type == SYNTHETIC_DATASET,
        dataset_name=facts.dataset_name,
        dataset_type=facts.dataset_type,
        dataset_split=facts.dataset_split,
        evaluation_note=facts.evaluation_note,
        summary_rows=_rows(facts.model_description),
        hyperparameter_rows=_rows(facts.hyperparameters or {}),
        metric_rows=[(_cell(name), f"{value:.6g}") for name, value in facts.metrics.items()],
        framework_versions=_framework_versions(facts.is_adapter),
    )
    card.save(folder / "README.md")
    return card


def _metric_of(name, classification_tasks):
    """The `model-index` metric type of a measured figure: a classifier's "match accuracy" is an `accuracy` (its name
    keeps the task); other figures are their own type."""
    task, _, metric = name.partition(" ")
    return {"metric_type": metric if classification_tasks and task in classification_tasks and metric else name}


def write_pushed_model_card(folder, model, repo_id, pipeline_tag):
    """The card `MMPreTrainedModel.push_to_hub` uploads: `write_model_card` for `model` and its `pipeline_tag`,
    without the run's metrics, data and hyper-parameters, which a model alone does not know (the example scripts
    write the full card)."""
    facts = CardFacts(
        model_name=repo_id.split("/")[-1],
        repo_id=repo_id,
        task_type=pipeline_tag,
        model_description=describe_model(model),
        modalities=_TASK_MODALITIES.get(pipeline_tag, MODALITIES),
    )
    return write_model_card(folder, facts)


def _auto_class(facts):
    """The Auto class the card's usage code loads the checkpoint with."""
    if facts.classification_tasks:
        return "AutoModelForSequenceClassification"
    return AUTO_CLASSES.get(facts.task_type, "AutoModel")


def _checked_metrics(metrics):
    """Plain floats (YAML cannot hold numpy scalars); a non-numeric or non-finite value is a broken run."""
    checked = {}
    for name, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
            raise ValueError(
                f"Metric {name!r} has value {value!r}; a model card reports finite numbers only. "
                "Drop it from `metrics` or fix the evaluation that produced it."
            )
        checked[str(name)] = float(value)
    return checked


def _is_hub_id(name):
    return bool(_HUB_ID.match(name)) and not Path(name).exists()


def _cell(value):
    # A "|" would end the Markdown table cell.
    return str(value).replace("|", "\\|").replace("\n", " ")


def _rows(mapping):
    return [(_cell(key), _cell(value)) for key, value in mapping.items()]


def _framework_versions(is_adapter):
    versions = []
    for package in ("transformers", "torch", "huggingface_hub") + (("peft",) if is_adapter else ()):
        try:
            versions.append((package, metadata.version(package)))
        except metadata.PackageNotFoundError:
            pass
    return versions


def push_folder_to_hub(
    folder, repo_id, *, token=None, private=False, commit_message="Upload mm model", overwrite=False
):
    """Uploads every file in `folder` (weights, config, remote-code .py files, processor files, README.md)
    to the model repo `repo_id`, creating the repo if needed. Returns the `CommitInfo`.

    Nothing already on the Hub is lost unless asked: if the repo has files (other than the `.gitattributes`
    every new repo gets), this raises `FileExistsError` unless `overwrite=True`, which makes the repo mirror
    the folder, deleting remote files the folder does not have (so stale weight shards cannot linger).

    Example:
    ```python
    >>> push_folder_to_hub("out", "my-org/mm-small").commit_url
    'https://huggingface.co/my-org/mm-small/commit/...'
    ```
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"Cannot push {folder}: it is not a folder.")
    if not any(path.is_file() for path in folder.rglob("*")):
        raise ValueError(f"Cannot push {folder}: it has no files. Save the model and processor there first.")
    if not (folder / "README.md").is_file():
        logger.warning(f"{folder} has no README.md; the repo will have no model card (see write_model_card).")

    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    existing = _repo_files(api, repo_id)
    if existing and not overwrite:
        shown = ", ".join(existing[:5]) + (", ..." if len(existing) > 5 else "")
        raise FileExistsError(
            f"The Hub repo {repo_id} already has {len(existing)} file(s) ({shown}); pushing {folder} would "
            "overwrite them. Pass overwrite=True to replace the repo's contents with the folder, "
            "or choose another repo_id."
        )
    return api.upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        commit_message=commit_message,
        delete_patterns="*" if existing else None,
    )


def check_hub_repo_is_empty(repo_id, token):
    """Fails before training, not after, when --push_to_hub would be refused (see push_folder_to_hub)."""
    api = HfApi(token=token)
    if "/" not in repo_id:
        repo_id = f"{api.whoami()['name']}/{repo_id}"
    if files := _repo_files(api, repo_id):
        raise FileExistsError(
            f"--push_to_hub: the Hub repo {repo_id} already has {len(files)} file(s), and this script never overwrites "
            "a repo. Choose another --hub_model_id, or push the finished folder yourself with "
            "training_mm.hub.push_folder_to_hub(folder, repo_id, overwrite=True)."
        )


def _repo_files(api, repo_id):
    """The files of the Hub repo `repo_id` other than the `.gitattributes` every new repo gets (none if there is no
    such repo)."""
    try:
        return [path for path in api.list_repo_files(repo_id) if path != ".gitattributes"]
    except RepositoryNotFoundError:
        return []
