"""MetaControllerCallback: a `TrainerCallback` that sets a learning-rate multiplier on top of the run's schedule
(and, when asked, adapts loss weights, modality dropout and staged training) from the training signals.

Every `interval` optimizer steps it reads the window's signals (`meta_signals`), lets its learned policy
(`meta_policy`: the hypergradient LSTM, the trend-predicting LSTM, or none) propose the multiplier, then applies
its rules (`meta_rules`: cautious start, bold driver and its overshoot probe, divergence reflex) and the
architectural adaptations
(`meta_adaptations`). Its whole state is saved in each checkpoint (`meta_state`) and restored on resume, so a
resumed run continues bit-identically. The rationale, the measurements behind every threshold and an example
are in docs/meta_controller.md.

`Trainer` calls the `report_to` integrations before the callbacks you pass, so to see the `meta_*` values in
TensorBoard move the controller ahead of them: `training_mm.trainer_steps.run_before_reporting(trainer, controller)`.
"""

import math
import os

import torch
from transformers import TrainerCallback
from transformers.utils import logging

from .meta_adaptations import Adaptations
from .meta_policy import FEATURE_CLIP, FEATURES, HypergradientPolicy, TrendPolicy, features_tensor
from .meta_rules import (
    CUT_FACTOR,
    GROWTH_CAP,
    LOSS_EMA_DECAY,
    MIN_SCHEDULE_FACTOR,
    MIN_UPDATE_RATIO,
    OVERSHOOT_SIGNIFICANCE,
    PROBE_WINDOWS,
    RAMP_FACTOR,
    SIGNIFICANCE,
    SPIKE_DEVIATIONS,
    SPIKE_FACTOR,
    START_MULTIPLIER,
    TREND_WINDOWS,
    bold_driver,
    is_spike,
    loss_plateaued,
    overshot,
)
from .meta_signals import (
    MAX_SAMPLED_COORDINATES,
    log_ratio,
    loss_of,
    mean,
    sample_gradients_and_parameters,
    sampling_stride,
    scale_learning_rates,
    std,
    sum_over_processes,
    t_statistic,
    world_size,
)
from .meta_state import STATE_FILE, has_state, read_state, write_state


__all__ = [
    "FEATURES",
    "FEATURE_CLIP",
    "GROWTH_CAP",
    "HISTORY_COLUMNS",
    "LOSS_EMA_DECAY",
    "MAX_SAMPLED_COORDINATES",
    "MIN_SCHEDULE_FACTOR",
    "MIN_UPDATE_RATIO",
    "OVERSHOOT_SIGNIFICANCE",
    "POLICIES",
    "PROBE_WINDOWS",
    "RAMP_FACTOR",
    "SIGNIFICANCE",
    "SPIKE_DEVIATIONS",
    "SPIKE_FACTOR",
    "START_MULTIPLIER",
    "STATE_FILE",
    "TREND_WINDOWS",
    "MetaControllerCallback",
]

logger = logging.get_logger(__name__)

HISTORY_COLUMNS = ("step", *FEATURES, "decided_log_multiplier", "meta_loss")
# "rules": the rules alone, no learned part (the ablation's rules-only arm).
POLICIES = ("hypergradient", "trend", "rules")
# Arguments added after the first release: a checkpoint written without them was built with these values.
_LATER_DEFAULTS = {
    "policy": "hypergradient", "pair_weights": False, "dropout_attribute": None, "staged_modules": [], "task_weights": False
}  # fmt: skip


class MetaControllerCallback(TrainerCallback):
    """Sets a learning-rate multiplier on top of the schedule from the training signals (see docs/meta_controller.md).

    Args:
        interval (`int`, defaults to 10): optimizer steps per decision. A decision's hypergradient is averaged
            over the `interval - 1` steps whose updates it fully controls.
        min_multiplier (`float`, defaults to 1e-2) and max_multiplier (`float`, defaults to 1e2): range of the
            multiplier; it must contain 1 (a run resumed without saved controller state continues at x1).
        hidden_size (`int`, defaults to 16): LSTM hidden size.
        meta_learning_rate (`float`, defaults to 5.0): SGD learning rate of the hypergradient policy. A
            significant window with mean hypergradient H moves log(multiplier) by roughly -meta_learning_rate * H.
        min_update_ratio (`float`, defaults to 5e-3): while the loss falls significantly, the multiplier grows
            beyond x1 as long as each step, scaled to the schedule's peak LR, moves the weights by less than this
            fraction of their norm. 0 never grows it beyond x1 on a falling loss.
        seed (`int`, defaults to 0): seed of the controller's initial weights (the global RNG is left untouched).
        policy (`str`, defaults to `"hypergradient"`): the learned part. `"hypergradient"`: an LSTM outputs the
            multiplier and learns from significant negative hypergradients; `"trend"`: an LSTM predicts the next
            window's loss/eval trend for a step up, down or none and takes the best when it predicts better than a
            constant; `"rules"`: no learned part, the rules alone set the multiplier.
        pair_weights (`bool`, defaults to False): adapt MMModel's per-modality-pair contrastive loss weights
            (`config.contrastive_pair_weights`): a pair whose loss falls slower gets more weight.
        dropout_attribute (`str`, optional): name of the model-config attribute holding a modality-dropout rate the
            model reads at each forward (e.g. `"modality_dropout"`, or MMForClassification's dotted
            `"fusion_encoder_config.modality_dropout"`); raised when the eval metric worsens while the training loss falls.
        staged_modules (`tuple[str]`, defaults to ()): parameter-name prefixes (e.g. `("vision_model",)`) held
            frozen until the training loss stops falling significantly; leave them trainable in the model.
        task_weights (`bool`, defaults to False): adapt the per-task weights of a multi-task MMForClassification's
            loss (`config.task_loss_weights`) from each task's loss (`output.task_losses`): a task whose loss falls
            slower gets more weight.

    The adaptations' values in force are logged (`meta_*`), checkpointed with the controller and written to the
    model's config (`config.meta_controller_adaptations`), so the saved model records what it trained with.

    Attributes:
        multiplier (`float`): the multiplier in force (`START_MULTIPLIER` at the start of a run).
        history (`list[list[float]]`): one row per decision, columns `HISTORY_COLUMNS`.
        cuts (`int`): how many times a divergence guard or the overshoot probe halved the multiplier.
        ceiling (`float`): the highest multiplier the controller may set: `max_multiplier` until a growth of the
            multiplier overshoots, then the multiplier before that growth.
    """

    def __init__(
        self,
        interval: int = 10,
        min_multiplier: float = 1e-2,
        max_multiplier: float = 1e2,
        hidden_size: int = 16,
        meta_learning_rate: float = 5.0,
        min_update_ratio: float = MIN_UPDATE_RATIO,
        seed: int = 0,
        policy: str = "hypergradient",
        pair_weights: bool = False,
        dropout_attribute: str | None = None,
        staged_modules: tuple[str, ...] = (),
        task_weights: bool = False,
    ):
        if interval < 3:
            raise ValueError(
                f"`interval` must be >= 3 (a window needs two hypergradients besides the decision step), "
                f"got {interval}."
            )
        if not 0 < min_multiplier <= 1 <= max_multiplier < math.inf:
            raise ValueError(
                f"Need 0 < min_multiplier <= 1 <= max_multiplier < inf (a run resumed without saved controller state "
                f"continues at x1); got "
                f"min_multiplier={min_multiplier}, max_multiplier={max_multiplier}."
            )
        if hidden_size < 1 or not 0 < meta_learning_rate < math.inf:
            raise ValueError(
                f"`hidden_size` must be >= 1 and `meta_learning_rate` positive and finite, got {hidden_size} and "
                f"{meta_learning_rate}."
            )
        if not 0 <= min_update_ratio < math.inf:
            raise ValueError(
                f"`min_update_ratio` must be >= 0 and finite (0 never grows the multiplier beyond x1 on a falling "
                f"loss), got {min_update_ratio}."
            )
        if policy not in POLICIES:
            raise ValueError(f"`policy` must be one of {list(POLICIES)}, got {policy!r}.")
        if isinstance(staged_modules, str):
            raise ValueError(
                f"`staged_modules` takes a tuple of parameter-name prefixes, got the string {staged_modules!r}; "
                f"write ({staged_modules!r},)."
            )
        self.config = {
            "interval": interval,
            "min_multiplier": min_multiplier,
            "max_multiplier": max_multiplier,
            "hidden_size": hidden_size,
            "meta_learning_rate": meta_learning_rate,
            "min_update_ratio": min_update_ratio,
            "seed": seed,
            "policy": policy,
            "pair_weights": pair_weights,
            "dropout_attribute": dropout_attribute,
            "staged_modules": list(staged_modules),
            "task_weights": task_weights,
        }
        self.adaptations = Adaptations(pair_weights, dropout_attribute, staged_modules, task_weights)
        self._hook = None
        self._reset()

    # ---- controller ---------------------------------------------------------------------------

    def _reset(self, scheduled_lr=None, peak_lr=None):
        """Fresh controller: seeded policy, multiplier `START_MULTIPLIER` (within the bounds), no history."""
        config = self.config
        start = min(max(START_MULTIPLIER, config["min_multiplier"]), config["max_multiplier"])
        bounds = math.log(config["min_multiplier"]), math.log(config["max_multiplier"])
        if config["policy"] == "hypergradient":
            self.policy = HypergradientPolicy(
                config["hidden_size"], config["meta_learning_rate"], config["seed"], start, bounds
            )
        elif config["policy"] == "trend":
            self.policy = TrendPolicy(config["hidden_size"], config["seed"])
        else:
            self.policy = None
        self.adaptations.reset()
        self.prev_params = None  # sampled parameters before the last optimizer step, for Δθ
        self.history = []
        # Everything below is JSON-serialisable and checkpointed as is (see _SCALARS).
        self.multiplier = start  # folded into param_groups' lr except between on_optimizer_step and on_step_end
        self.window = {"log_loss": [], "grad_norm": [], "hypergradient": [], "update_ratio": []}
        self.prev_window = {"log_loss": [], "grad_norm": []}  # the last window that had measurements
        self.scheduled_lr = scheduled_lr  # the schedule's own LR at the last decision
        self.peak_lr = peak_lr  # the schedule's peak LR, to tell where warmup stands
        self.loss_ema = None  # EMA of the per-step log loss and of its squared deviation:
        self.loss_var = 0.0  # the divergence reflex's reference level and noise scale
        self.recent_log_loss = []  # the last TREND_WINDOWS * interval per-step log losses, for the loss trend
        self.prev_schedule_factor = None  # scheduled LR / peak LR of the last update, to scale its size to the peak
        self.last_eval = None
        self.eval_trend = 0.0
        self.cuts = 0
        self.ceiling = config["max_multiplier"]  # lowered to the multiplier before a growth that overshot
        self.probe = None  # the last bold-driver growth while its outcome is judged (see _probe)
        self.last_logs = {"meta_lr_multiplier": start}
        self._loss_sum, self._loss_count = 0.0, 0
        self._stride = None

    # The learned policy's LSTM, head and hidden state (the hypergradient and trend policies have them).
    lstm = property(lambda self: self.policy.lstm)
    head = property(lambda self: self.policy.head)
    hidden = property(lambda self: self.policy.hidden)

    def _features(self, scheduled_lr):
        w, prev = self.window, self.prev_window
        return features_tensor(
            [
                mean(w["hypergradient"]),
                mean(w["log_loss"]) - mean(prev["log_loss"]) if w["log_loss"] and prev["log_loss"] else 0.0,
                std(w["log_loss"]),
                log_ratio(max(w["grad_norm"], default=0.0), mean(prev["grad_norm"])),
                math.log(self.multiplier),
                log_ratio(scheduled_lr, self.peak_lr),
                self.eval_trend,
            ]
        )

    def _decide(self, step, scheduled_lr, model):
        w = self.window
        hypergradient = mean(w["hypergradient"])
        self.peak_lr = max(self.peak_lr, scheduled_lr)
        evidence = hypergradient
        if scheduled_lr > self.scheduled_lr and hypergradient < 0:  # warmup: a deliberately low LR is weak evidence
            evidence *= (scheduled_lr / self.peak_lr) ** 2
        undershoot = hypergradient < 0 and abs(t_statistic(w["hypergradient"])) >= SIGNIFICANCE
        features = self._features(scheduled_lr)
        # What the decision in force led to: this window's change of the log loss, plus the eval metric's change.
        outcome = features[0, FEATURES.index("loss_trend")].item() + features[0, FEATURES.index("eval_trend")].item()
        if self.policy is not None:
            self.policy.learn(evidence, undershoot, outcome)
        self.scheduled_lr = scheduled_lr

        before = self.multiplier
        if self.policy is not None:
            decided = self.policy.decide(features, math.log(self.multiplier))
            if math.isfinite(decided):  # keeps a NaN out; clamping again here undoes float32 rounding
                low, high = self.config["min_multiplier"], min(self.config["max_multiplier"], self.ceiling)
                self.multiplier = min(max(math.exp(decided), low), high)
        if not self._probe(w["log_loss"]):
            factor = bold_driver(
                w["log_loss"],
                self.prev_window["log_loss"],
                self.recent_log_loss,
                self.config["interval"],
                w["update_ratio"],
                self.config["min_update_ratio"],
                self.multiplier,
                ceiling=self.ceiling,
                probing=self.probe is not None,
            )
            if factor == CUT_FACTOR:
                self._cut()
            elif factor > 1:
                if factor >= RAMP_FACTOR:  # a full ramp step is a probe: the windows after it tell whether it overshot
                    reference = list(w["log_loss"])
                    self.probe = {"from": self.multiplier, "reference": reference, "windows": 0, "log_loss": []}
                self._shift(factor)
        if self.policy is not None:
            self.policy.record(math.log(self.multiplier / before))

        meta_loss = math.exp(mean(w["log_loss"])) if w["log_loss"] else None
        self.history.append([step, *features[0].tolist(), math.log(self.multiplier), meta_loss or math.nan])
        self.last_logs = {"meta_lr_multiplier": self.multiplier, "meta_hypergradient": hypergradient}
        if self.ceiling < self.config["max_multiplier"]:
            self.last_logs["meta_lr_ceiling"] = self.ceiling
        if w["update_ratio"]:
            self.last_logs["meta_update_ratio"] = mean(w["update_ratio"])
        if meta_loss is not None:
            self.last_logs["meta_loss"] = meta_loss
        if self.adaptations.active:
            plateau = loss_plateaued(self.recent_log_loss, self.config["interval"])
            loss_fell = features[0, FEATURES.index("loss_trend")].item() < 0
            self.last_logs.update(self.adaptations.decide(model, step, plateau, loss_fell, self.eval_trend))
        self.prev_window = {key: w[key] or self.prev_window[key] for key in self.prev_window}
        self.window = {key: [] for key in w}
        self.eval_trend = 0.0
        # The first update after a decision was made under the previous multiplier; forgetting the previous
        # parameters skips its hypergradient, so that each window measures only its own decision.
        self.prev_params = None

    def _shift(self, factor):
        """Scale the multiplier (within its bounds); the learned policy continues from there."""
        low, high = self.config["min_multiplier"], self.config["max_multiplier"]
        new = min(max(self.multiplier * factor, low), high)
        if self.policy is not None:
            self.policy.shift(math.log(new / self.multiplier))
        self.multiplier = new
        self.last_logs["meta_lr_multiplier"] = new

    def _cut(self):
        """Halve the multiplier (the policy and the bold driver can take it back, up to the ceiling). A cut while a
        growth is probed means that growth overshot: the multiplier before it becomes the ceiling."""
        self._shift(CUT_FACTOR)
        self.cuts += 1
        if self.probe is not None:
            self.ceiling = min(self.ceiling, self.probe["from"])
            self.probe = None

    def _probe(self, window_log_loss):
        """Judge the last growth by this window: cut and set the ceiling if its loss rose above the window before
        the growth; stop probing after PROBE_WINDOWS windows. Returns whether it cut."""
        if self.probe is None:
            return False
        self.probe["log_loss"] += window_log_loss
        self.probe["windows"] += 1
        if overshot(self.probe["log_loss"], self.probe["reference"]):
            self._cut()
            return True
        if self.probe["windows"] >= PROBE_WINDOWS:
            self.probe = None
        return False

    # ---- signals -------------------------------------------------------------------------------

    def _record_loss(self, module, inputs, output):
        if not module.training:
            return
        loss = loss_of(output)
        if loss is not None:
            # Stays on the device: the one host sync per step happens in on_pre_optimizer_step.
            self._loss_sum = self._loss_sum + loss.detach().float()
            self._loss_count += 1
        self.adaptations.observe(output)

    def _observe(self, log_loss, optimizer):
        """Per-step loss bookkeeping and the divergence reflex."""
        if self.loss_ema is None:
            self.loss_ema = log_loss
        deviation = log_loss - self.loss_ema
        if is_spike(deviation, self.loss_var):
            old = self.multiplier
            self._cut()
            scale_learning_rates(optimizer, self.multiplier / old)  # damps the very step about to be taken
        # The spike also inflates the variance, so that the few steps over which Adam's momentum carries a
        # blow-up on after the cut do not halve the multiplier again and again.
        self.loss_ema += (1 - LOSS_EMA_DECAY) * deviation
        self.loss_var = LOSS_EMA_DECAY * self.loss_var + (1 - LOSS_EMA_DECAY) * deviation**2
        self.window["log_loss"].append(log_loss)
        self.recent_log_loss = [*self.recent_log_loss, log_loss][-TREND_WINDOWS * self.config["interval"] :]

    # ---- Trainer events ------------------------------------------------------------------------

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        scheduled_lr = float(optimizer.param_groups[0]["lr"])
        # torch schedulers record the peak as "initial_lr"; without one, the current LR is the reference.
        peak_lr = float(optimizer.param_groups[0].get("initial_lr", scheduled_lr))
        if state.global_step == 0:
            self._reset(scheduled_lr, peak_lr)
            scale_learning_rates(optimizer, self.multiplier)  # the cautious start applies from the first step
        else:
            self._resume(args, state, scheduled_lr, peak_lr)
        self.adaptations.begin(model, fresh=state.global_step == 0)
        self._remove_hook()
        self._hook = model.register_forward_hook(self._record_loss)

    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        if self._loss_count == 0:
            self._remove_hook()
            raise ValueError(
                "MetaControllerCallback reads the training loss from the model output (`outputs.loss`, "
                "`outputs['loss']` or a scalar `outputs[0]`), but the model returned none during this step. "
                "Compute the loss in `forward` (pass `labels`/`return_loss=True`) rather than in "
                "`compute_loss_func`."
            )
        loss = self._loss_sum / self._loss_count
        self._loss_sum, self._loss_count = 0.0, 0
        self.adaptations.hold(model)
        params = [p for p in model.parameters() if p.requires_grad]
        if self._stride is None:
            self._stride = sampling_stride(params)
        grads, params = sample_gradients_and_parameters(params, self._stride)
        delta = torch.zeros_like(params) if self.prev_params is None else params - self.prev_params.to(params.device)
        stats = torch.stack(
            [loss.to(params.device, params.dtype), grads @ delta, grads @ grads, delta @ delta, params @ params]
        )
        loss, grad_dot_delta, grad_sq, delta_sq, params_sq = sum_over_processes(stats).tolist()
        loss /= world_size()
        # With fp16 loss scaling, non-finite gradients are normal: the scaler skips that step.
        if not math.isfinite(loss) or not (math.isfinite(grad_sq) or args.fp16):
            problem = f"Training loss is {loss}" if not math.isfinite(loss) else "Sampled gradients are non-finite"
            self._remove_hook()
            raise FloatingPointError(
                f"{problem} at step {state.global_step + 1}, with learning rate "
                f"{float(optimizer.param_groups[0]['lr']):.3g} (x{self.multiplier:.3g} from the meta-controller). "
                f"Training was stopped before the optimizer step, so no weights or checkpoints with non-finite "
                f"values were written. Lower `learning_rate` (or `max_multiplier`), keep gradient clipping on "
                f"(`max_grad_norm`), check the batch for NaN/inf inputs or labels, then resume from the last "
                f"checkpoint in {args.output_dir}."
            )
        self.prev_params = params
        if loss > 0:  # the loss signals are on a log scale
            self._observe(math.log(loss), optimizer)
        if math.isfinite(grad_sq):
            self.window["grad_norm"].append(math.sqrt(grad_sq))
        denominator = math.sqrt(grad_sq * delta_sq)
        if math.isfinite(grad_dot_delta) and math.isfinite(denominator) and denominator > 0:
            self.window["hypergradient"].append(grad_dot_delta / denominator)
        # Relative size of the last update, scaled to the schedule's peak: what this multiplier moves per step.
        # Not measured deep in warmup or decay, where float32 rounding of tiny updates would dominate it.
        if delta_sq > 0 and params_sq > 0 and (self.prev_schedule_factor or 0) >= MIN_SCHEDULE_FACTOR:
            self.window["update_ratio"].append(math.sqrt(delta_sq / params_sq) / self.prev_schedule_factor)
        scheduled_lr = float(optimizer.param_groups[0]["lr"]) / self.multiplier
        self.prev_schedule_factor = scheduled_lr / self.peak_lr if self.peak_lr else None

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        # Hand the scheduler its own learning rates back before it steps.
        scale_learning_rates(optimizer, 1.0 / self.multiplier)

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        if state.global_step % self.config["interval"] == 0:
            self._decide(state.global_step, float(optimizer.param_groups[0]["lr"]), model)
        scale_learning_rates(optimizer, self.multiplier)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        name = args.metric_for_best_model or "loss"
        value = (metrics or {}).get(name if name.startswith("eval_") else f"eval_{name}")
        if value is None or not math.isfinite(value):
            return
        if self.last_eval is not None:
            sign = -1.0 if args.greater_is_better else 1.0  # positive = got worse, whichever way is better
            self.eval_trend = sign * (value - self.last_eval) / max(abs(self.last_eval), 1e-12)
        self.last_eval = value

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or "loss" not in logs:
            return
        logs.update(self.last_logs)
        # Trainer appended a copy of `logs` to log_history before calling the callbacks; complete it too.
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(self.last_logs)

    def on_save(self, args, state, control, **kwargs):
        if not args.should_save:
            return
        checkpoint = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if os.path.isdir(checkpoint):
            self.save(checkpoint)
        else:  # hyperparameter search writes its checkpoints into per-trial folders
            logger.warning(f"No checkpoint folder {checkpoint}: the meta-controller's state was not saved.")

    def on_train_end(self, args, state, control, **kwargs):
        self._remove_hook()

    def _remove_hook(self):
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    # ---- checkpointing -------------------------------------------------------------------------

    _SCALARS = (
        "multiplier",
        "window",
        "prev_window",
        "scheduled_lr",
        "peak_lr",
        "loss_ema",
        "loss_var",
        "recent_log_loss",
        "prev_schedule_factor",
        "last_eval",
        "eval_trend",
        "cuts",
        "ceiling",
        "probe",
        "last_logs",
    )

    def save(self, directory: str):
        """Write the whole controller state to `directory/meta_controller.safetensors`."""
        tensors, policy_scalars = self.policy.state() if self.policy is not None else ({}, {})
        if self.prev_params is not None:
            tensors["prev_params"] = self.prev_params
        if self.history:
            tensors["history"] = torch.tensor(self.history, dtype=torch.float64)
        metadata = {
            "config": self.config,
            **{name: getattr(self, name) for name in self._SCALARS},
            "policy": policy_scalars,
            "adaptations": self.adaptations.state(),
        }
        write_state(directory, tensors, metadata)

    def load(self, directory: str):
        """Restore the controller from `directory/meta_controller.safetensors`, as written by `save`."""
        tensors, metadata = read_state(directory)
        saved_config = {**_LATER_DEFAULTS, **metadata["config"]}
        if saved_config != self.config:
            raise ValueError(
                f"The meta-controller saved in {directory} was built with {saved_config}, this callback with "
                f"{self.config}. Construct MetaControllerCallback with the same arguments to resume."
            )
        self._reset()
        if self.policy is not None:
            self.policy.load_state(tensors, metadata.get("policy", {}))
        self.prev_params = tensors.get("prev_params")
        self.history = tensors["history"].tolist() if "history" in tensors else []
        for name in self._SCALARS:
            if name in metadata:  # a checkpoint from before the overshoot probe keeps its fresh ceiling and probe
                setattr(self, name, metadata[name])
        if "adaptations" in metadata:
            self.adaptations.load_state(metadata["adaptations"])

    def _resume(self, args, state, scheduled_lr, peak_lr):
        candidates = [os.path.join(args.output_dir, f"checkpoint-{state.global_step}")]
        if isinstance(args.resume_from_checkpoint, str):
            candidates.insert(0, args.resume_from_checkpoint)
        for directory in candidates:
            if has_state(directory):
                self.load(directory)
                return
        # Trainer restored the optimizer's learning rates without any multiplier, which is what x1 expects; a
        # cautious start makes no sense in the middle of a run.
        self._reset(scheduled_lr, peak_lr)
        self._shift(1 / self.multiplier)
        logger.warning(
            f"Resuming at step {state.global_step}, but no {STATE_FILE} was found in {candidates}: the "
            "meta-controller starts afresh at x1. If the checkpoint lives outside `output_dir`, also set "
            "`TrainingArguments.resume_from_checkpoint` to it."
        )
