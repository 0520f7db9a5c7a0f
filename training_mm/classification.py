"""Training and measuring `MMForClassification` (examples/run_classification.py, benchmarks/bench_fusion.py): the tasks
a dataset's label columns define, batching of rows with any subset of modalities, the staged-training callback, and
the held-out metrics (scikit-learn) with their per-modality ablation.
"""

import logging
import math
from itertools import combinations

import numpy as np
import torch
from datasets import IterableDataset
from transformers import TrainerCallback

from .media_inputs import media_inputs

logger = logging.getLogger(__name__)

# Rows a modality is read from: text from `caption`, the others from their own column.
MODALITY_COLUMNS = {"text": "caption", "image": "image", "audio": "audio"}
PROBLEM_TYPES = ("single_label_classification", "multi_label_classification", "regression")
# The metric each problem type is ranked and ablated by (higher is better except RMSE).
HEADLINE_METRICS = {"single_label_classification": "accuracy", "multi_label_classification": "mAP", "regression": "rmse"}
LABEL_INFERENCE_ROWS = 100_000  # rows of a streamed training split read to find its classes


# ------------------------------------------------------------------------------------------------ tasks


def infer_tasks(train_split, label_columns, problem_type=None):
    """`{column: {"problem_type", "labels" | "num_labels"}}` for `MMConfig(tasks=...)`, read from the training split.

    A list-valued column is multi-label (its classes: every value seen), a float column regression, an integer or
    string column single-label classification (its classes: the values seen, sorted). `problem_type` overrides what
    the values suggest for every column (integers may be a count: `"regression"`).
    """
    if problem_type is not None and problem_type not in PROBLEM_TYPES:
        raise ValueError(f"--problem_type must be one of {list(PROBLEM_TYPES)}, got {problem_type!r}.")
    rows = train_split.select_columns(list(label_columns))
    if isinstance(rows, IterableDataset):
        rows = rows.take(LABEL_INFERENCE_ROWS)
    values = {column: [row[column] for row in rows] for column in label_columns}
    tasks = {}
    for column, column_values in values.items():
        present = [value for value in column_values if value is not None]
        if not present:
            raise ValueError(f"Label column {column!r} holds no values in the training split.")
        kind = problem_type or _problem_type_of(present)
        if kind == "regression":
            _check_numbers(column, present)
            tasks[column] = {"problem_type": kind, "num_labels": 1}
            continue
        flat = [v for value in present for v in value] if kind == "multi_label_classification" and isinstance(present[0], list) else present
        classes = sorted({_class_name(value) for value in flat}, key=_class_order)
        if kind == "single_label_classification" and len(classes) < 2:
            raise ValueError(f"Label column {column!r} has a single class ({classes}) in training; it needs two or more.")
        tasks[column] = {"problem_type": kind, "labels": classes}
    return tasks


def _problem_type_of(values):
    if isinstance(values[0], (list, tuple)):
        return "multi_label_classification"
    if all(isinstance(value, float) for value in values):
        return "regression"
    return "single_label_classification"


def _check_numbers(column, values):
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(
                f"Regression column {column!r} holds {value!r} ({type(value).__name__}), not a number; convert the "
                "column to numbers, or pass --problem_type single_label_classification to treat it as classes."
            )


def _class_name(value):
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _class_order(name):
    # Numeric classes in numeric order ("2" before "10"), the rest alphabetically after them.
    try:
        return (0, float(name), "")
    except ValueError:
        return (1, 0.0, name)


def encode_labels(rows, column, spec):
    """The label tensor of `rows` for one task: class ids (B,), multi-hot (B, C) or values (B,); fails naming a value
    the task does not know (a class unseen in training, a string in a regression column)."""
    values = [row[column] for row in rows]
    kind = spec["problem_type"]
    if kind == "regression":
        _check_numbers(column, values)
        return torch.tensor(values, dtype=torch.float32)
    index = {name: i for i, name in enumerate(spec["labels"])}

    def class_id(value):
        name = _class_name(value)
        if name not in index:
            raise ValueError(
                f"Label {value!r} in column {column!r} is not one of the classes the model was trained on "
                f"({spec['labels'][:20]}{', ...' if len(index) > 20 else ''}); drop those rows or retrain with them."
            )
        return index[name]

    if kind == "single_label_classification":
        return torch.tensor([class_id(value) for value in values], dtype=torch.long)
    multi_hot = torch.zeros(len(values), len(index))
    for row, value in enumerate(values):
        for item in value if isinstance(value, (list, tuple)) else [value]:
            multi_hot[row, class_id(item)] = 1.0
    return multi_hot


def pipeline_task(modalities):
    """The Hub pipeline tag of a classifier: the stock pipeline of its richest single modality."""
    if "image" in modalities:
        return "image-classification"
    return "audio-classification" if "audio" in modalities else "text-classification"


def check_held_out_labels(splits, tasks):
    """Fails, before any training, on a held-out split whose labels the tasks cannot take (a class unseen in training,
    a string in a regression column), naming the split; streamed splits are checked as their batches are read."""
    for name, split in splits.items():
        if name == "train" or isinstance(split, IterableDataset):
            continue
        rows = list(split.select_columns(list(tasks)))
        for column, spec in tasks.items():
            try:
                encode_labels(rows, column, spec)
            except ValueError as error:
                raise ValueError(f"The {name} split: {error}") from None


# ------------------------------------------------------------------------------------------------ batching


class ClassificationCollator:
    """Rows -> the keyword arguments of `MMForClassification.forward`, with `labels` when `tasks` are given.

    Each row may lack any modality (a missing or None `caption`/`image`/`audio`); the batch then carries `has_text`
    / `has_image` / `has_audio` and the model masks what is absent. Only the `modalities` named are read (the ablation
    evaluates the same rows with fewer).

    Args:
        processor (`MMProcessor`): tokenizes captions, prepares images, featurizes audio.
        modalities (`tuple[str]`): a subset of "text", "image", "audio".
        tasks (`dict`): `{label column: spec}` (from `infer_tasks` / `config.task_specs()`); `single_task` makes
            `labels` one tensor (the model then has one head, named as transformers' defaults name it).
    """

    def __init__(self, processor, modalities, tasks=None, single_task=False):
        unknown = set(modalities) - set(MODALITY_COLUMNS)
        if not modalities or unknown:
            raise ValueError(f"modalities must be a non-empty subset of {list(MODALITY_COLUMNS)}, got {modalities!r}.")
        self.processor = processor
        self.modalities = tuple(modalities)
        self.tasks = tasks or {}
        self.single_task = single_task

    def __call__(self, rows):
        batch = {}
        present = {name: [i for i, row in enumerate(rows) if _has(row, name)] for name in self.modalities}
        empty = [i for i in range(len(rows)) if not any(i in index for index in present.values())]
        if empty:
            raise ValueError(f"Rows {empty[:10]} of the batch have none of the modalities {list(self.modalities)}.")
        for name, index in present.items():
            if not index:
                continue
            inputs = self._process(name, [rows[i] for i in index])
            if len(index) < len(rows):
                inputs = {key: _scatter(value, index, len(rows)) for key, value in inputs.items()}
                batch[f"has_{name}"] = torch.zeros(len(rows), dtype=torch.bool).index_fill_(0, torch.tensor(index), True)
            batch.update(inputs)
        if self.tasks:
            labels = {column: encode_labels(rows, column, spec) for column, spec in self.tasks.items()}
            batch["labels"] = next(iter(labels.values())) if self.single_task else labels
        return batch

    def _process(self, name, rows):
        if name == "text":
            return dict(self.processor(text=[row["caption"] for row in rows], return_tensors="pt"))
        return dict(self.processor(**media_inputs(rows, name, self.processor), return_tensors="pt"))


def _has(row, modality):
    value = row.get(MODALITY_COLUMNS[modality])
    return value is not None and not (isinstance(value, str) and not value.strip())


def _scatter(values, index, batch):
    """`values` of the rows `index` into a batch of `batch` rows; the other rows hold zeros (masked by the model)."""
    out = values.new_zeros((batch, *values.shape[1:]))
    out[torch.tensor(index)] = values
    return out


# ------------------------------------------------------------------------------------------------ staged training


class FreezeTowersCallback(TrainerCallback):
    """Staged training: the towers stay frozen for the first `steps` optimizer steps (only the new fusion layers and
    heads learn, so their random start does not disturb trained towers), then train with them.

    Under DDP, pass `ddp_find_unused_parameters=True`: the frozen towers get no gradients.
    """

    def __init__(self, steps):
        self.steps = steps

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step < self.steps:
            _unwrapped(model).freeze_towers(True)
            logger.info("Towers frozen for the first %d steps.", self.steps)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.steps:
            _unwrapped(model).freeze_towers(False)
            logger.info("Step %d: the towers train from now on.", state.global_step)


def _unwrapped(model):
    while not hasattr(model, "freeze_towers") and hasattr(model, "module"):
        model = model.module
    return model


# ------------------------------------------------------------------------------------------------ measuring


@torch.no_grad()
def predict(model, processor, split, modalities, batch_size):
    """Every task's logits over `split` with only `modalities` given: `{task: (N, num_labels) array}`."""
    model.eval()
    collator = ClassificationCollator(processor, modalities)
    tasks = list(model.config.task_specs())
    outputs = {task: [] for task in tasks}
    rows = []
    for row in split:
        rows.append(row)
        if len(rows) == batch_size:
            _predict_batch(model, collator, rows, outputs)
            rows = []
    if rows:
        _predict_batch(model, collator, rows, outputs)
    return {task: np.concatenate(values) for task, values in outputs.items()}


def _predict_batch(model, collator, rows, outputs):
    keep = [row for row in rows if any(_has(row, name) for name in collator.modalities)]
    if len(keep) != len(rows):
        raise ValueError(f"{len(rows) - len(keep)} held-out rows have none of {list(collator.modalities)}.")
    batch = {key: value.to(model.device) for key, value in collator(rows).items()}
    out = model(**batch)
    task_logits = out.task_logits or {next(iter(outputs)): out.logits}
    for task, logits in task_logits.items():
        outputs[task].append(logits.float().cpu().numpy())


def task_metrics(spec, logits, labels):
    """scikit-learn metrics of one task: accuracy and macro-F1 (+ AUROC when binary); mAP and micro-F1 for
    multi-label; RMSE and MAE for regression."""
    from sklearn import metrics

    kind = spec["problem_type"]
    if kind == "regression":
        predictions = logits.reshape(len(labels), -1).squeeze(-1)
        return {
            "rmse": math.sqrt(metrics.mean_squared_error(labels, predictions)),
            "mae": metrics.mean_absolute_error(labels, predictions),
        }
    if kind == "single_label_classification":
        predicted = logits.argmax(-1)
        result = {
            "accuracy": metrics.accuracy_score(labels, predicted),
            "macro_f1": metrics.f1_score(labels, predicted, average="macro", labels=list(range(logits.shape[-1]))),
        }
        if logits.shape[-1] == 2 and len(np.unique(labels)) == 2:
            probabilities = torch.softmax(torch.from_numpy(logits), -1)[:, 1].numpy()
            result["auroc"] = metrics.roc_auc_score(labels, probabilities)
        return result
    scores = 1 / (1 + np.exp(-logits))
    seen = labels.sum(0) > 0  # average precision is undefined for a class with no positive
    return {
        "mAP": metrics.average_precision_score(labels[:, seen], scores[:, seen], average="macro"),
        "micro_f1": metrics.f1_score(labels, scores > 0.5, average="micro", zero_division=0),
    }


def evaluate_split(model, processor, split, modalities, batch_size, label_columns=None):
    """`{task: {metric: value}}` on `split` with only `modalities` given. `label_columns` maps the model's tasks to
    the split's columns (default: the task names; a single-task model's one task reads the one column given)."""
    specs = model.config.task_specs()
    columns = label_columns or {task: task for task in specs}
    logits = predict(model, processor, split, modalities, batch_size)
    results = {}
    for task, spec in specs.items():
        column = columns[task]
        labels = encode_labels(list(split.select_columns([column])), column, spec).numpy()
        results[task] = task_metrics(spec, logits[task], labels)
    return results


def modality_subsets(modalities):
    """Every non-empty subset of `modalities`, largest first: all, each pair, each single one."""
    return [subset for size in range(len(modalities), 0, -1) for subset in combinations(modalities, size)]


def ablation(model, processor, split, modalities, batch_size, label_columns=None):
    """`{subset (tuple): {task: {metric: value}}}` for every subset of `modalities`."""
    return {
        subset: evaluate_split(model, processor, split, subset, batch_size, label_columns)
        for subset in modality_subsets(modalities)
    }


def format_ablation_table(results, specs):
    """The ablation as a text table: one row per modality subset, one column per task's headline metric."""
    tasks = list(specs)
    headers = [f"{task} {HEADLINE_METRICS[specs[task]['problem_type'] or 'single_label_classification']}" for task in tasks]
    width = max(len(" + ".join(subset)) for subset in results) + 2
    lines = [f"{'modalities':<{width}}" + "".join(f"{header:>24}" for header in headers)]
    for subset, metrics in results.items():
        cells = [
            metrics[task][HEADLINE_METRICS[specs[task]["problem_type"] or "single_label_classification"]] for task in tasks
        ]
        lines.append(f"{' + '.join(subset):<{width}}" + "".join(f"{cell:>24.3f}" for cell in cells))
    return "\n".join(lines)
