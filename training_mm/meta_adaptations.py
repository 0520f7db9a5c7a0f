"""Architectural adaptations the meta-controller makes besides the learning rate, each off unless asked:

- `pair_weights`: per-modality-pair weights of MMModel's contrastive loss (`config.contrastive_pair_weights`).
  A pair whose loss has fallen less, relative to its first window, gets more weight (a weak modality that learns
  slower is pushed harder); the weights average 1, so the loss keeps its scale.
- `task_weights`: per-task weights of MMForClassification's multi-task loss (`config.task_loss_weights`), set the
  same way from each task's loss (`output.task_losses`): a task that learns slower gets more weight.
- `dropout_attribute`: the name of a config attribute holding a modality-dropout rate that the model reads at
  each forward (e.g. `"modality_dropout"`; a dotted path reaches a sub-config, as in MMForClassification's
  `"fusion_encoder_config.modality_dropout"`). After an evaluation whose metric got worse while the training loss
  fell, the rate rises by `DROPOUT_STEP`, up to `DROPOUT_MAX`.
- `staged_modules`: parameter-name prefixes (e.g. `("vision_model",)`) held frozen, i.e. their gradients are
  dropped before each optimizer step so the optimizer skips them, until the training loss of the rest stops
  falling significantly; then they train.

The values in force are written to the model's config (`config.meta_controller_adaptations`, plus the fields the
model reads), so a saved checkpoint records what it trained with, and logged as `meta_*` values.
"""

import torch

from .meta_signals import mean


# (pair name in config.contrastive_pair_weights, MMOutput logits field): the pairs MMModel scores.
PAIR_LOGITS = (
    ("image_text", "logits_per_image"),
    ("audio_text", "logits_per_audio"),
    ("audio_image", "logits_per_audio_image"),
)
PAIR_WEIGHT_RANGE = (0.25, 4.0)
PAIR_WEIGHT_SMOOTHING = 0.5  # share of the new target weight taken at each decision
DROPOUT_STEP = 0.05
DROPOUT_MAX = 0.5


class Adaptations:
    def __init__(self, pair_weights=False, dropout_attribute=None, staged_modules=(), task_weights=False):
        self.pair_weights_on = pair_weights
        self.task_weights_on = task_weights
        self.dropout_attribute = dropout_attribute
        self.staged_modules = tuple(staged_modules)
        self.reset()

    @property
    def active(self):
        return (
            self.pair_weights_on or self.task_weights_on or self.dropout_attribute is not None or bool(self.staged_modules)
        )

    def reset(self):
        # JSON-serialisable, checkpointed as is.
        self.pair_weights = None  # {pair: weight}
        self.pair_reference = {}  # {pair: mean loss of its first window}
        self.pair_window = {}  # {pair: [sum, count]} of the current window
        self.task_weights = None  # {task: weight}; task_reference and task_window as for the pairs
        self.task_reference = {}
        self.task_window = {}
        self.dropout_rate = None
        self.released_at = {prefix: None for prefix in self.staged_modules}

    def begin(self, model, fresh):
        """Check the model offers what was asked for, and write the values in force into its config."""
        if not self.active:
            return
        config = model.config
        if self.task_weights_on and len(getattr(config, "tasks", None) or {}) < 2:
            raise ValueError(
                f"MetaControllerCallback(task_weights=True) weighs the tasks of a multi-task MMForClassification, but "
                f"this model's config has tasks {getattr(config, 'tasks', None)!r}; pass task_weights=False, or train "
                f"a model with two or more `tasks`."
            )
        if self.dropout_attribute is not None:
            owner, name = _owner(config, self.dropout_attribute)
            if owner is None or not hasattr(owner, name):
                raise ValueError(
                    f"MetaControllerCallback(dropout_attribute={self.dropout_attribute!r}): the model's config has no "
                    f"attribute {self.dropout_attribute!r}. Pass the name of the config field holding the modality-"
                    f"dropout rate the model reads at each forward, or None."
                )
            if fresh or self.dropout_rate is None:
                self.dropout_rate = float(getattr(owner, name) or 0.0)
        names = [name for name, p in model.named_parameters()]
        for prefix in self.staged_modules:
            held = [p for name, p in model.named_parameters() if name.startswith(prefix)]
            if not held:
                raise ValueError(
                    f"MetaControllerCallback(staged_modules=...): no parameter name starts with {prefix!r}; names "
                    f"start with e.g. {sorted({n.split('.')[0] for n in names})}."
                )
            if not all(p.requires_grad for p in held):
                raise ValueError(
                    f"MetaControllerCallback(staged_modules=...): the parameters under {prefix!r} must be trainable "
                    f"(requires_grad=True) when Trainer builds its optimizer; the controller holds them until they "
                    f"should train."
                )
        self.apply(model)

    def observe(self, output):
        """Per-task losses and per-pair contrastive losses (symmetric cross-entropy on the diagonal) of a training
        forward."""
        if self.task_weights_on:
            task_losses = output.get("task_losses") if isinstance(output, dict) else getattr(output, "task_losses", None)
            for task, loss in (task_losses or {}).items():
                _accumulate(self.task_window, task, loss.detach().float().item())
        if not self.pair_weights_on:
            return
        for pair, field in PAIR_LOGITS:
            logits = getattr(output, field, None) if not isinstance(output, dict) else output.get(field)
            if logits is None or logits.ndim != 2 or logits.shape[0] != logits.shape[1]:
                continue
            logits = logits.detach().float()
            targets = torch.arange(logits.shape[0], device=logits.device)
            loss = (
                torch.nn.functional.cross_entropy(logits, targets) + torch.nn.functional.cross_entropy(logits.t(), targets)
            ) / 2
            _accumulate(self.pair_window, pair, loss.item())

    def hold(self, model):
        """Drop the gradients of the staged modules not yet released, so the optimizer skips them."""
        prefixes = tuple(prefix for prefix, step in self.released_at.items() if step is None)
        if not prefixes:
            return
        for name, parameter in model.named_parameters():
            if name.startswith(prefixes):
                parameter.grad = None

    def decide(self, model, step, loss_plateaued, loss_fell, eval_trend):
        """One decision: returns the `meta_*` values to log."""
        logs = {}
        if self.pair_weights_on and self.pair_window:
            self.pair_weights = rebalanced(self.pair_weights, self.pair_window, self.pair_reference)
            self.pair_window = {}
        if self.pair_weights:
            logs.update({f"meta_pair_weight_{pair}": weight for pair, weight in self.pair_weights.items()})
        if self.task_weights_on and self.task_window:
            self.task_weights = rebalanced(self.task_weights, self.task_window, self.task_reference)
            self.task_window = {}
        if self.task_weights:
            logs.update({f"meta_task_weight_{task}": weight for task, weight in self.task_weights.items()})
        if self.dropout_attribute is not None:
            if eval_trend > 0 and loss_fell:
                self.dropout_rate = min(self.dropout_rate + DROPOUT_STEP, DROPOUT_MAX)
            logs["meta_modality_dropout"] = self.dropout_rate
        for prefix, released in self.released_at.items():
            if released is None and loss_plateaued:
                self.released_at[prefix] = step
            logs[f"meta_released_{prefix}"] = float(self.released_at[prefix] is not None)
        self.apply(model)
        return logs

    def apply(self, model):
        """Write the values in force into the model's config, where the model reads them and checkpoints keep them."""
        if not self.active:
            return
        config = model.config
        record = {}
        if self.pair_weights_on:
            config.contrastive_pair_weights = self.pair_weights
            record["contrastive_pair_weights"] = self.pair_weights
        if self.task_weights_on:
            config.task_loss_weights = self.task_weights
            record["task_loss_weights"] = self.task_weights
        if self.dropout_attribute is not None:
            owner, name = _owner(config, self.dropout_attribute)
            setattr(owner, name, self.dropout_rate)
            record[self.dropout_attribute] = self.dropout_rate
        if self.staged_modules:
            record["staged_modules_released_at_step"] = dict(self.released_at)
        config.meta_controller_adaptations = record

    _STATE = (
        "pair_weights", "pair_reference", "pair_window", "task_weights", "task_reference", "task_window",
        "dropout_rate", "released_at",
    )  # fmt: skip

    def state(self):
        return {name: getattr(self, name) for name in self._STATE}

    def load_state(self, state):
        for name in self._STATE:
            if name in state:  # a checkpoint from before the task weights keeps their fresh values
                setattr(self, name, state[name])


def _accumulate(window, name, loss):
    total = window.setdefault(name, [0.0, 0])
    total[0] += loss
    total[1] += 1


def rebalanced(weights, window, reference):
    """New weights of several losses (modality pairs, tasks) from one window: `window` holds `{name: [sum, count]}` of
    each loss, `reference` (updated here) each loss's first window mean. A loss that has fallen less, relative to its
    reference, gets more weight; the targets average 1, each step moves `PAIR_WEIGHT_SMOOTHING` of the way to them,
    within `PAIR_WEIGHT_RANGE`."""
    losses = {name: total / count for name, (total, count) in window.items() if count}
    for name, loss in losses.items():
        reference.setdefault(name, loss)
    progress = {name: loss / max(reference[name], 1e-12) for name, loss in losses.items()}
    average = mean(list(progress.values())) or 1.0
    target = {name: value / average for name, value in progress.items()}
    old = weights or {name: 1.0 for name in target}
    low, high = PAIR_WEIGHT_RANGE
    return {
        name: min(max(old.get(name, 1.0) + PAIR_WEIGHT_SMOOTHING * (target[name] - old.get(name, 1.0)), low), high)
        for name in target
    }


def _owner(config, path):
    """(object holding the last attribute of the dotted `path`, that attribute's name); (None, name) if absent."""
    *parents, name = path.split(".")
    for parent in parents:
        config = getattr(config, parent, None)
    return config, name
