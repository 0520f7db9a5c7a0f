"""Learning-rate meta-controller: a small LSTM, trained online during the run, that scales the LR schedule.

The "double loop": the inner loop is ordinary `Trainer` training; the outer loop is an LSTM that every
`interval` optimizer steps reads training signals and sets a learning-rate *multiplier* on top of whatever
schedule the run uses, and that is itself trained, during the run, by gradient descent on the training loss
its past multipliers produced.

Algorithm

1. Signals, every optimizer step: the training loss (read from the model output by a forward hook) and, on
   a fixed strided sample of at most 65,536 parameter coordinates, the gradient norm (after clipping) and the
   normalised hypergradient cos(g_t, Δθ_{t-1}). Every optimizer update scales linearly with its learning rate, so
   g_t · Δθ_{t-1} is exactly d loss_t / d log(lr_{t-1}) (Baydin et al. 2018, "Online Learning Rate
   Adaptation with Hypergradient Descent"): positive when the last step overshot, negative when consecutive
   steps agree and a larger step would have gone further.
2. Decision, every `interval` steps: the LSTM reads `FEATURES` (mean hypergradient, change and spread of the
   log loss, gradient-norm spike, current log multiplier, position on the schedule, relative change of the
   latest eval metric) and outputs log(multiplier), clamped to [log min_multiplier, log max_multiplier]. Its
   output layer starts at the constant log(`START_MULTIPLIER`) = log(0.1): every run starts cautiously, see 5.
3. Meta-update (the outer loop): the window that followed a decision measured H, its mean hypergradient,
   i.e. d(window loss) / d(log multiplier). The LSTM is re-run on the inputs of that decision and one SGD
   step descends H * log(multiplier) through its weights: a gradient step on the training loss with respect
   to the controller. SGD keeps the move proportional to the evidence. Three filters keep it honest:
   - only windows whose hypergradient is significant (|t| >= `SIGNIFICANCE` over the window's steps) teach
     the controller;
   - only "LR too low" (H < 0) teaches it. With Adam the sharpest directions sit at the edge of stability
     (Cohen et al. 2022, "Adaptive Gradient Methods at the Edge of Stability"), so after the first few dozen
     steps H is significantly positive whatever the LR: measured on the mm contrastive model (tiny preset,
     built-in data, AdamW), +0.03 at a learning rate ten times too low and +0.08 at the tuned one. It is the
     short-horizon bias of the one-step hypergradient (Wu et al. 2018); acting on it cut the multiplier to
     x0.24 at a near-tuned LR, for an 18% worse eval loss. An LR that is really too high shows in the loss,
     which the guards of 4 watch;
   - while the schedule is still rising (warmup), "LR too low" counts only in proportion to
     (scheduled LR / peak LR)^2, because a deliberately low LR is weak evidence against the multiplier.
4. Bold driver (Battiti 1989), on the loss: after each decision whose last `TREND_WINDOWS` windows show a
   significantly falling log loss (least-squares slope, t <= -`SIGNIFICANCE`), the multiplier grows by
   `RAMP_FACTOR` = sqrt(2), up to `GROWTH_CAP` = x1 -- and beyond x1 while the run's steps are small: while
   the window's updates, scaled to the schedule's peak, move the weights by less than `min_update_ratio`
   (default 0.5%) of their norm per step (measured on steps whose scheduled LR is at least
   `MIN_SCHEDULE_FACTOR` = 10% of the peak); a window whose mean loss rose significantly over the previous one
   halves it. A step whose loss jumps above twice its recent average, beyond three recent standard
   deviations (log scale), halves it at once, before that step is applied. All three write into the LSTM's
   output bias, so the learned controller continues from there.
   Why the update size decides growth beyond x1: a falling loss alone says nothing about whether a larger LR
   would end lower (growing on it without limit brought ten times too low runs of the mm model to the tuned
   run's eval loss, but made the toy regression of tests/test_meta_controller.py end 34% worse at its tuned
   LR), and with Adam the hypergradient cannot say it either after the first steps (see 3). The relative
   update size can: at the peak of the schedule, Adam moves each weight by about the LR, so ||Δθ|| / ||θ||
   measures the LR against the scale of the weights. Measured per step, scaled to the peak, at x1 (strided
   sample, AdamW, steps 25-125): the mm contrastive model (tiny preset) 0.7-0.9% at its tuned LR and
   0.08-0.1% at ten times too low; the toy 2.2% at its tuned LR and 0.6% at ten times too low. 0.5% separates
   both. It is a rule of thumb, not a law (Karpathy's "update / weight ratio ~1e-3"; LARS and LAMB rest on the
   same ratio): set `min_update_ratio=0` to keep growth at x1 when a small LR is deliberate, e.g. finetuning
   a pretrained model.
5. Why start at x0.1: the first steps of a contrastive model at a learning rate well above the tuned one
   collapse its embeddings (the loss sits at log(batch size), the gradients vanish) before any signal exists,
   and that cannot be undone; ten times too high a learning rate ends at chance retrieval without the
   controller. Starting at x0.1 and growing back while the loss falls costs a tuned run little (measured: a
   warmup-cosine run ramped from x0.1 to x1 over its first 40 steps ended where the plain run did), and
   later in training the model tolerates larger steps than the early phase allows.

How it composes with the schedule: the multiplier is folded into `optimizer.param_groups[i]["lr"]`.
`on_optimizer_step` divides it out before the scheduler steps and `on_step_end` multiplies it back in, so
any scheduler (warmup, cosine, constant, chainable ones, ReduceLROnPlateau) keeps stepping its own values, and
accelerate's wrapped optimizer passes `param_groups` through. `Trainer` logs `learning_rate` from the
scheduler; the effective rate is that times `meta_lr_multiplier`.

State: LSTM and head weights, hidden state, the decision in force, the per-decision history
(`HISTORY_COLUMNS`), the current window's signals and every scalar are written to
`meta_controller.safetensors` (tensors plus one JSON metadata entry, nothing pickled) in each checkpoint
folder, and restored when training resumes from that checkpoint; a resumed run continues exactly like an
uninterrupted one. The controller uses no randomness after its seeded initialisation.
(`ExportableState` would store only JSON in `trainer_state.json`, restores only with
`restore_callback_states_from_checkpoint=True`, and then replaces the callback object you hold.)

Guards: the multiplier is always finite and inside [min_multiplier, max_multiplier], so the learning rate is
the schedule's times a positive finite factor. A non-finite training loss (or non-finite gradients outside
fp16 loss scaling) raises `FloatingPointError` before the optimizer step, so no weights or checkpoints with
NaN are ever written.

Limits: the model must return its loss from `forward` (HF convention). Damage done by the first steps of an
LR more than ten times too high (the cautious start covers x10), before any signal exists, cannot be undone;
warmup gives the guards time to act. A learning rate that is too low is raised beyond x1 by significant
negative hypergradients (with Adam, in the first few dozen steps only, see 3) and by the bold driver while the
updates are small (see 4): a deliberately small LR, as in finetuning, is raised too unless
`min_update_ratio=0`. Very short runs pay for the cautious start: the bold driver needs `TREND_WINDOWS`
windows of losses before it first raises the multiplier. Tested
single-process and with DDP; under DeepSpeed the gradients are not in `param.grad`, so only the loss signals
and guards work there. A checkpoint
outside `output_dir` is found only through `TrainingArguments.resume_from_checkpoint`.

Example (runs as is on CPU in a few seconds):

```python
import torch
from torch import nn
from transformers import Trainer, TrainingArguments
from training_mm.meta_controller import MetaControllerCallback


class Regressor(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 32), nn.GELU(), nn.Linear(32, 1))

    def forward(self, x, labels=None):
        return {"loss": nn.functional.mse_loss(self.net(x).squeeze(-1), labels)}


x = torch.randn(512, 8)
data = [{"x": xi, "labels": xi.sum()} for xi in x]
args = TrainingArguments("out", max_steps=100, learning_rate=1e-2, logging_steps=20, report_to="none", use_cpu=True)
controller = MetaControllerCallback()
trainer = Trainer(model=Regressor(), args=args, train_dataset=data, callbacks=[controller])
trainer.train()
print(controller.multiplier, [log["meta_lr_multiplier"] for log in trainer.state.log_history if "loss" in log])
```

`Trainer` calls the `report_to` integrations before the callbacks you pass, so to see the `meta_*` values in
TensorBoard move the controller ahead of them after building the Trainer:
`training_mm.cli.run_before_reporting(trainer, controller)` (examples/run_clip.py does). They are always in
`trainer.state.log_history` (hence `trainer_state.json`) and in the console logs.
"""

import json
import math
import os
from collections.abc import Mapping

import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from transformers import TrainerCallback
from transformers.utils import logging


logger = logging.get_logger(__name__)

STATE_FILE = "meta_controller.safetensors"
FEATURES = (
    "hypergradient",
    "loss_trend",
    "loss_noise",
    "grad_norm_spike",
    "log_multiplier",
    "schedule_phase",
    "eval_trend",
)
HISTORY_COLUMNS = ("step", *FEATURES, "decided_log_multiplier", "meta_loss")
# Hypergradients are measured on a fixed strided sample of at most this many coordinates, so the
# controller's memory and time stay constant however large the model is.
MAX_SAMPLED_COORDINATES = 2**16
# Features are clipped to this range so that no signal, however wild, can saturate or break the LSTM.
FEATURE_CLIP = 5.0
# |t-statistic| a window's evidence needs before it moves the controller (see steps 3 and 4 of the module doc).
SIGNIFICANCE = 3.0
# Cautious start and bold-driver growth (steps 4 and 5 of the module doc): the multiplier starts at
# START_MULTIPLIER and grows RAMP_FACTOR-fold per decision, up to GROWTH_CAP, while the log loss of the last
# TREND_WINDOWS windows falls significantly.
START_MULTIPLIER = 0.1
RAMP_FACTOR = math.sqrt(2)
GROWTH_CAP = 1.0
TREND_WINDOWS = 3
# Beyond GROWTH_CAP the bold driver grows the multiplier only while a step moves the weights by less than this
# fraction of their norm at the schedule's peak (`min_update_ratio`, step 4 of the module doc).
MIN_UPDATE_RATIO = 5e-3
# ... measured only on steps whose scheduled LR is at least this fraction of the peak.
MIN_SCHEDULE_FACTOR = 0.1
# Divergence reflex: loss above SPIKE_FACTOR x its EMA, beyond SPIKE_DEVIATIONS EMA standard deviations
# (log scale, EMA over ~1 / (1 - LOSS_EMA_DECAY) = 10 steps).
SPIKE_FACTOR = 2.0
SPIKE_DEVIATIONS = 3.0
LOSS_EMA_DECAY = 0.9


class MetaControllerCallback(TrainerCallback):
    """Online-trained LSTM that sets a learning-rate multiplier on top of the schedule (see the module docstring).

    Args:
        interval (`int`, defaults to 10): optimizer steps per decision. A decision's hypergradient is averaged
            over the `interval - 1` steps whose updates it fully controls.
        min_multiplier (`float`, defaults to 1e-2) and max_multiplier (`float`, defaults to 1e2): range of the
            multiplier; it must contain 1 (a run resumed without saved controller state continues at x1).
        hidden_size (`int`, defaults to 16): LSTM hidden size.
        meta_learning_rate (`float`, defaults to 5.0): SGD learning rate of the controller. A significant window
            with mean hypergradient H moves log(multiplier) by roughly -meta_learning_rate * H; |H| <= 1 and is
            rarely above 0.5, so the default moves the multiplier by up to ~10x in one window of strong evidence.
        min_update_ratio (`float`, defaults to 5e-3): while the loss falls significantly, the multiplier grows
            beyond x1 as long as each step, scaled to the schedule's peak LR, moves the weights by less than this
            fraction of their norm (step 4 of the module doc). 0 never grows it beyond x1 on a falling loss.
        seed (`int`, defaults to 0): seed of the controller's initial weights (the global RNG is left untouched).

    Attributes:
        multiplier (`float`): the multiplier in force (`START_MULTIPLIER` at the start of a run).
        history (`list[list[float]]`): one row per decision, columns `HISTORY_COLUMNS`.
        cuts (`int`): how many times a divergence guard halved the multiplier.
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
        self.config = {
            "interval": interval,
            "min_multiplier": min_multiplier,
            "max_multiplier": max_multiplier,
            "hidden_size": hidden_size,
            "meta_learning_rate": meta_learning_rate,
            "min_update_ratio": min_update_ratio,
            "seed": seed,
        }
        self._hook = None
        self._reset()

    # ---- controller ---------------------------------------------------------------------------

    def _reset(self, scheduled_lr=None, peak_lr=None):
        """Fresh controller: seeded weights, multiplier `START_MULTIPLIER` (within the bounds), no history."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config["seed"])
            self.lstm = nn.LSTMCell(len(FEATURES), self.config["hidden_size"])
            self.head = nn.Linear(self.config["hidden_size"], 1)
        # A constant output layer decides the cautious start whatever the inputs: the controller moves the
        # learning rate only once evidence has told it which way to go.
        start = min(max(START_MULTIPLIER, self.config["min_multiplier"]), self.config["max_multiplier"])
        nn.init.zeros_(self.head.weight)
        nn.init.constant_(self.head.bias, math.log(start))
        # Plain SGD keeps the move proportional to the evidence (Adam would move as far on weak evidence as
        # on strong), and has no state of its own to checkpoint.
        self.meta_optimizer = torch.optim.SGD(
            [*self.lstm.parameters(), *self.head.parameters()], lr=self.config["meta_learning_rate"]
        )
        zeros = torch.zeros(1, self.config["hidden_size"])
        self.hidden = (zeros, zeros.clone())
        # (features, h, c) of the decision in force, re-run for its meta-update. The run starts under an
        # implicit decision taken with no information, so the first window already teaches the controller.
        self.pending = (torch.zeros(1, len(FEATURES)), zeros.clone(), zeros.clone())
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
        self.last_logs = {"meta_lr_multiplier": start}
        self._loss_sum, self._loss_count = 0.0, 0
        self._stride = None

    def _log_multiplier(self, features, h, c):
        h, c = self.lstm(features, (h, c))
        bounds = math.log(self.config["min_multiplier"]), math.log(self.config["max_multiplier"])
        return self.head(h).squeeze().clamp(*bounds), (h, c)

    def _features(self, scheduled_lr):
        w, prev = self.window, self.prev_window
        values = [
            _mean(w["hypergradient"]),
            _mean(w["log_loss"]) - _mean(prev["log_loss"]) if w["log_loss"] and prev["log_loss"] else 0.0,
            _std(w["log_loss"]),
            _log_ratio(max(w["grad_norm"], default=0.0), _mean(prev["grad_norm"])),
            math.log(self.multiplier),
            _log_ratio(scheduled_lr, self.peak_lr),
            self.eval_trend,
        ]
        features = torch.tensor([values], dtype=torch.float32)
        return torch.nan_to_num(features, nan=0.0).clamp(-FEATURE_CLIP, FEATURE_CLIP)

    def _decide(self, step, scheduled_lr):
        w = self.window
        hypergradient = _mean(w["hypergradient"])
        self.peak_lr = max(self.peak_lr, scheduled_lr)
        evidence = hypergradient
        if scheduled_lr > self.scheduled_lr and hypergradient < 0:  # warmup: see step 3 of the module doc
            evidence *= (scheduled_lr / self.peak_lr) ** 2
        if hypergradient < 0 and abs(_t_statistic(w["hypergradient"])) >= SIGNIFICANCE:
            # Outer loop: descend d(loss)/d(log multiplier) of the decision in force through the LSTM.
            self.meta_optimizer.zero_grad()
            log_multiplier, _ = self._log_multiplier(*self.pending)
            (evidence * log_multiplier).backward()
            self.meta_optimizer.step()
        self.scheduled_lr = scheduled_lr

        features = self._features(scheduled_lr)
        with torch.no_grad():
            log_multiplier, hidden = self._log_multiplier(features, *self.hidden)
        self.pending = (features, *self.hidden)
        self.hidden = hidden
        if math.isfinite(log_multiplier.item()):  # keeps a NaN out; clamping again here undoes float32 rounding
            low, high = self.config["min_multiplier"], self.config["max_multiplier"]
            self.multiplier = min(max(math.exp(log_multiplier.item()), low), high)
        # Bold driver: a loss that rose significantly over a whole window (a gradual blow-up) halves the
        # multiplier; one that keeps falling significantly grows it back towards x1, and beyond x1 while the updates
        # are small (see step 4 of the module doc).
        if _t_statistic(w["log_loss"], self.prev_window["log_loss"]) >= SIGNIFICANCE:
            self._cut()
        elif (
            len(self.recent_log_loss) == TREND_WINDOWS * self.config["interval"]
            and _slope_t_statistic(self.recent_log_loss) <= -SIGNIFICANCE
        ):
            slow = bool(w["update_ratio"]) and _mean(w["update_ratio"]) < self.config["min_update_ratio"]
            factor = RAMP_FACTOR if slow else min(RAMP_FACTOR, GROWTH_CAP / self.multiplier)
            if factor > 1:
                self._shift(factor)

        meta_loss = math.exp(_mean(w["log_loss"])) if w["log_loss"] else None
        self.history.append([step, *features[0].tolist(), math.log(self.multiplier), meta_loss or math.nan])
        self.last_logs = {"meta_lr_multiplier": self.multiplier, "meta_hypergradient": hypergradient}
        if w["update_ratio"]:
            self.last_logs["meta_update_ratio"] = _mean(w["update_ratio"])
        if meta_loss is not None:
            self.last_logs["meta_loss"] = meta_loss
        self.prev_window = {key: w[key] or self.prev_window[key] for key in self.prev_window}
        self.window = {key: [] for key in w}
        self.eval_trend = 0.0
        # The first update after a decision was made under the previous multiplier; forgetting the previous
        # parameters skips its hypergradient, so that each window measures only its own decision.
        self.prev_params = None

    def _shift(self, factor):
        """Scale the multiplier (within its bounds) and write the change into the LSTM's output bias, so that
        its next decisions start from there."""
        low, high = self.config["min_multiplier"], self.config["max_multiplier"]
        new = min(max(self.multiplier * factor, low), high)
        with torch.no_grad():
            self.head.bias += math.log(new / self.multiplier)
        self.multiplier = new
        self.last_logs["meta_lr_multiplier"] = new

    def _cut(self):
        """Halve the multiplier (the hypergradient and the bold driver can take it back)."""
        self._shift(0.5)
        self.cuts += 1

    # ---- signals -------------------------------------------------------------------------------

    def _record_loss(self, module, inputs, output):
        if not module.training:
            return
        loss = _loss_of(output)
        if loss is not None:
            # Stays on the device: the one host sync per step happens in on_pre_optimizer_step.
            self._loss_sum = self._loss_sum + loss.detach().float()
            self._loss_count += 1

    def _sample(self, model):
        """Strided sample of (gradients, parameters) over all trainable parameters, as two flat vectors."""
        params = [p for p in model.parameters() if p.requires_grad]
        if self._stride is None:
            self._stride = max(1, math.ceil(sum(p.numel() for p in params) / MAX_SAMPLED_COORDINATES))
        device = params[0].device

        def sample(tensor):
            # float64, so that squared norms of huge but finite gradients do not overflow into a false alarm.
            return tensor.detach().reshape(-1)[:: self._stride].to(device, torch.float64)

        values = [sample(p) for p in params]
        grads = [torch.zeros_like(v) if p.grad is None else sample(p.grad) for p, v in zip(params, values)]
        return torch.cat(grads), torch.cat(values)

    def _observe(self, log_loss, optimizer):
        """Per-step loss bookkeeping and the divergence reflex."""
        if self.loss_ema is None:
            self.loss_ema = log_loss
        deviation = log_loss - self.loss_ema
        if deviation > math.log(SPIKE_FACTOR) + SPIKE_DEVIATIONS * math.sqrt(self.loss_var):
            old = self.multiplier
            self._cut()
            _scale_learning_rates(optimizer, self.multiplier / old)  # damps the very step about to be taken
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
            _scale_learning_rates(optimizer, self.multiplier)  # the cautious start applies from the first step
        else:
            self._resume(args, state, scheduled_lr, peak_lr)
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
        grads, params = self._sample(model)
        delta = torch.zeros_like(params) if self.prev_params is None else params - self.prev_params.to(params.device)
        stats = torch.stack(
            [loss.to(params.device, params.dtype), grads @ delta, grads @ grads, delta @ delta, params @ params]
        )
        loss, grad_dot_delta, grad_sq, delta_sq, params_sq = _sum_over_processes(stats).tolist()
        loss /= _world_size()
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
        _scale_learning_rates(optimizer, 1.0 / self.multiplier)

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        if state.global_step % self.config["interval"] == 0:
            self._decide(state.global_step, float(optimizer.param_groups[0]["lr"]))
        _scale_learning_rates(optimizer, self.multiplier)

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
        "last_logs",
    )

    def save(self, directory: str):
        """Write the whole controller state to `directory/meta_controller.safetensors`."""
        tensors = {f"lstm.{k}": v for k, v in self.lstm.state_dict().items()}
        tensors.update({f"head.{k}": v for k, v in self.head.state_dict().items()})
        tensors["hidden.h"], tensors["hidden.c"] = self.hidden
        tensors["pending.features"], tensors["pending.h"], tensors["pending.c"] = self.pending
        if self.prev_params is not None:
            tensors["prev_params"] = self.prev_params
        if self.history:
            tensors["history"] = torch.tensor(self.history, dtype=torch.float64)
        tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
        metadata = {"config": self.config, **{name: getattr(self, name) for name in self._SCALARS}}
        save_file(tensors, os.path.join(directory, STATE_FILE), metadata={"state": json.dumps(metadata)})

    def load(self, directory: str):
        """Restore the controller from `directory/meta_controller.safetensors`, as written by `save`."""
        with safe_open(os.path.join(directory, STATE_FILE), framework="pt") as f:
            metadata = json.loads(f.metadata()["state"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        if metadata["config"] != self.config:
            raise ValueError(
                f"The meta-controller saved in {directory} was built with {metadata['config']}, this callback with "
                f"{self.config}. Construct MetaControllerCallback with the same arguments to resume."
            )
        self._reset()
        self.lstm.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("lstm.")})
        self.head.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("head.")})
        self.hidden = (tensors["hidden.h"], tensors["hidden.c"])
        self.pending = (tensors["pending.features"], tensors["pending.h"], tensors["pending.c"])
        self.prev_params = tensors.get("prev_params")
        self.history = tensors["history"].tolist() if "history" in tensors else []
        for name in self._SCALARS:
            setattr(self, name, metadata[name])

    def _resume(self, args, state, scheduled_lr, peak_lr):
        candidates = [os.path.join(args.output_dir, f"checkpoint-{state.global_step}")]
        if isinstance(args.resume_from_checkpoint, str):
            candidates.insert(0, args.resume_from_checkpoint)
        for directory in candidates:
            if os.path.isfile(os.path.join(directory, STATE_FILE)):
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


def _loss_of(output):
    """The scalar loss in a model output, read the way Trainer reads it, or None."""
    if isinstance(output, Mapping):  # dicts and transformers' ModelOutput
        loss = output.get("loss")
    elif isinstance(output, (tuple, list)) and output:
        loss = output[0]
    else:
        loss = getattr(output, "loss", None)
    return loss if torch.is_tensor(loss) and loss.numel() == 1 else None


def _scale_learning_rates(optimizer, factor):
    for group in optimizer.param_groups:
        if torch.is_tensor(group["lr"]):
            group["lr"].mul_(factor)  # fused/capturable optimizers hold a tensor LR that must stay in place
        else:
            group["lr"] = group["lr"] * factor


def _t_statistic(values, reference=None):
    """Welch t-statistic of mean(values) - mean(reference), or of mean(values) alone; 0 when undefined."""
    if len(values) < 2 or (reference is not None and len(reference) < 2):
        return 0.0
    difference = _mean(values) - (_mean(reference) if reference is not None else 0.0)
    variance = _std(values) ** 2 / len(values) + (_std(reference) ** 2 / len(reference) if reference else 0.0)
    if variance == 0:
        return math.copysign(math.inf, difference) if difference else 0.0
    return difference / math.sqrt(variance)


def _slope_t_statistic(values):
    """t-statistic of the least-squares slope of `values` against their index; 0 when undefined."""
    n = len(values)
    if n < 3:
        return 0.0
    x_mean, y_mean = (n - 1) / 2, _mean(values)
    sxx = sum((i - x_mean) ** 2 for i in range(n))
    slope = sum((i - x_mean) * (y - y_mean) for i, y in enumerate(values)) / sxx
    residual = sum((y - y_mean - slope * (i - x_mean)) ** 2 for i, y in enumerate(values)) / (n - 2)
    if residual == 0:
        return math.copysign(math.inf, slope) if slope else 0.0
    return slope / math.sqrt(residual / sxx)


def _mean(values):
    return sum(values) / len(values) if values else 0.0


def _std(values):
    if len(values) < 2:
        return 0.0
    mean = _mean(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _log_ratio(value, reference):
    return math.log(value / reference) if value and reference and value > 0 and reference > 0 else 0.0


def _world_size():
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _sum_over_processes(tensor):
    # Every process must take the same decisions (and stop together on a NaN), so the per-step signals are
    # summed over processes; the ratios built from them (cosine, norm ratios) do not change when the
    # gradients are replicated rather than sharded.
    if _world_size() > 1:
        dist.all_reduce(tensor)
    return tensor
