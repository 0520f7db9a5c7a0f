"""The meta-controller's learned part: small LSTMs, trained online during the run, that set or adjust the
learning-rate multiplier from the window's signals (`FEATURES`).

- `HypergradientPolicy` (the default, `policy="hypergradient"`): outputs log(multiplier); one SGD step per
  window descends the window's significant negative hypergradient (d loss / d log multiplier) through its
  weights. The rules write their changes into its output bias.
- `TrendPolicy` (`policy="trend"`): predicts the next window's change of the log loss (plus the eval metric's
  relative change when an evaluation happened) from the signals and a candidate change of the multiplier, is
  trained on every window's outcome (overshoot and undershoot alike, a regression, not a one-sided gradient),
  and moves the multiplier by one ramp step up or down when it predicts that this ends lower than holding.

docs/meta_controller.md explains both and what the ablation measured.
"""

import math

import torch
from torch import nn

from .meta_rules import RAMP_FACTOR


FEATURES = (
    "hypergradient",
    "loss_trend",
    "loss_noise",
    "grad_norm_spike",
    "log_multiplier",
    "schedule_phase",
    "eval_trend",
)
# Features are clipped to this range so that no signal, however wild, can saturate or break the LSTM.
FEATURE_CLIP = 5.0
# TrendPolicy: SGD rate, the scale of its regression target, the windows it must have learned from before it
# acts, and how many recent predictions judge whether it predicts better than a constant.
TREND_LEARNING_RATE = 0.05
TREND_TARGET_SCALE = 10.0
TREND_MIN_WINDOWS = 5
TREND_MEMORY = 10


def features_tensor(values):
    features = torch.tensor([values], dtype=torch.float32)
    return torch.nan_to_num(features, nan=0.0).clamp(-FEATURE_CLIP, FEATURE_CLIP)


class HypergradientPolicy:
    """LSTM -> log(multiplier), trained by descending significant negative hypergradients (the original design).

    Its output layer starts at zero weights and bias log(`start`): it follows the rules (which write into that
    bias) until a window's hypergradient teaches it otherwise.
    """

    name = "hypergradient"

    def __init__(self, hidden_size, meta_learning_rate, seed, start, bounds):
        self.bounds = bounds
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.lstm = nn.LSTMCell(len(FEATURES), hidden_size)
            self.head = nn.Linear(hidden_size, 1)
        # A constant output layer decides the cautious start whatever the inputs: the controller moves the
        # learning rate only once evidence has told it which way to go.
        nn.init.zeros_(self.head.weight)
        nn.init.constant_(self.head.bias, math.log(start))
        # Plain SGD keeps the move proportional to the evidence (Adam would move as far on weak evidence as
        # on strong), and has no state of its own to checkpoint.
        self.meta_optimizer = torch.optim.SGD([*self.lstm.parameters(), *self.head.parameters()], lr=meta_learning_rate)
        zeros = torch.zeros(1, hidden_size)
        self.hidden = (zeros, zeros.clone())
        # (features, h, c) of the decision in force, re-run for its meta-update. The run starts under an
        # implicit decision taken with no information, so the first window already teaches the controller.
        self.pending = (torch.zeros(1, len(FEATURES)), zeros.clone(), zeros.clone())

    def _log_multiplier(self, features, h, c):
        h, c = self.lstm(features, (h, c))
        return self.head(h).squeeze().clamp(*self.bounds), (h, c)

    def learn(self, evidence, significant_undershoot, outcome):
        """Outer loop: descend d(loss)/d(log multiplier) of the decision in force, when the window showed a
        significant "LR too low" (see docs/meta_controller.md for why only that direction)."""
        if significant_undershoot:
            self.meta_optimizer.zero_grad()
            log_multiplier, _ = self._log_multiplier(*self.pending)
            (evidence * log_multiplier).backward()
            self.meta_optimizer.step()

    def decide(self, features, log_multiplier):
        """The log multiplier for the next window (`log_multiplier` is the one in force)."""
        with torch.no_grad():
            decided, hidden = self._log_multiplier(features, *self.hidden)
        self.pending = (features, *self.hidden)
        self.hidden = hidden
        return decided.item()

    def shift(self, log_factor):
        """The rules moved the multiplier: the LSTM continues from there."""
        with torch.no_grad():
            self.head.bias += log_factor

    def record(self, log_change):
        pass

    def state(self):
        tensors = {f"lstm.{k}": v for k, v in self.lstm.state_dict().items()}
        tensors.update({f"head.{k}": v for k, v in self.head.state_dict().items()})
        tensors["hidden.h"], tensors["hidden.c"] = self.hidden
        tensors["pending.features"], tensors["pending.h"], tensors["pending.c"] = self.pending
        return tensors, {}

    def load_state(self, tensors, scalars):
        self.lstm.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("lstm.")})
        self.head.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("head.")})
        self.hidden = (tensors["hidden.h"], tensors["hidden.c"])
        self.pending = (tensors["pending.features"], tensors["pending.h"], tensors["pending.c"])


class TrendPolicy:
    """LSTM that predicts the next window's trend (change of mean log loss, plus the eval metric's relative
    change) from the features and a candidate change of log(multiplier); it moves the multiplier by one ramp step
    when its predictions beat a constant guess and it predicts a lower trend for that step than for holding."""

    name = "trend"

    def __init__(self, hidden_size, seed):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.lstm = nn.LSTMCell(len(FEATURES) + 1, hidden_size)
            self.head = nn.Linear(hidden_size, 1)
        self.meta_optimizer = torch.optim.SGD([*self.lstm.parameters(), *self.head.parameters()], lr=TREND_LEARNING_RATE)
        zeros = torch.zeros(1, hidden_size)
        self.hidden = (zeros, zeros.clone())
        self.pending = None  # (features, h, c) of the last decision, whose outcome the next window measures
        self.pending_action = 0.0  # the change of log(multiplier) taken at that decision, by rules and policy
        self.errors, self.targets = [], []  # recent squared prediction errors and targets (scaled)

    def _predict(self, features, action, h, c):
        inputs = torch.cat([features, torch.tensor([[action]], dtype=torch.float32)], dim=1)
        h, c = self.lstm(inputs, (h, c))
        return self.head(h).squeeze(), (h, c)

    def learn(self, evidence, significant_undershoot, outcome):
        """Regress the last decision's prediction on the trend this window measured (`outcome`)."""
        if self.pending is None:
            return
        target = TREND_TARGET_SCALE * outcome
        self.meta_optimizer.zero_grad()
        predicted, _ = self._predict(self.pending[0], self.pending_action, *self.pending[1:])
        loss = (predicted - target) ** 2
        loss.backward()
        self.meta_optimizer.step()
        self.errors = [*self.errors, loss.item()][-TREND_MEMORY:]
        self.targets = [*self.targets, target][-TREND_MEMORY:]

    def trusted(self):
        """Whether recent predictions beat a constant guess (the targets' mean)."""
        if len(self.targets) < TREND_MIN_WINDOWS:
            return False
        average = sum(self.targets) / len(self.targets)
        variance = sum((t - average) ** 2 for t in self.targets) / len(self.targets)
        return sum(self.errors) / len(self.errors) < variance

    def decide(self, features, log_multiplier):
        step = math.log(RAMP_FACTOR)
        with torch.no_grad():
            predictions = {a: self._predict(features, a, *self.hidden)[0].item() for a in (-step, 0.0, step)}
            _, hidden = self._predict(features, 0.0, *self.hidden)
        self.pending = (features, *self.hidden)
        self.hidden = hidden
        best = min(predictions, key=predictions.get)
        if self.trusted() and math.isfinite(predictions[best]) and predictions[best] < predictions[0.0]:
            return log_multiplier + best
        return log_multiplier

    def shift(self, log_factor):
        pass

    def record(self, log_change):
        """The decision's total change of log(multiplier) (policy and rules): the action the next window judges."""
        self.pending_action = log_change

    def state(self):
        tensors = {f"lstm.{k}": v for k, v in self.lstm.state_dict().items()}
        tensors.update({f"head.{k}": v for k, v in self.head.state_dict().items()})
        tensors["hidden.h"], tensors["hidden.c"] = self.hidden
        if self.pending is not None:
            tensors["pending.features"], tensors["pending.h"], tensors["pending.c"] = self.pending
        scalars = {"pending_action": self.pending_action, "errors": self.errors, "targets": self.targets}
        return tensors, scalars

    def load_state(self, tensors, scalars):
        self.lstm.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("lstm.")})
        self.head.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("head.")})
        self.hidden = (tensors["hidden.h"], tensors["hidden.c"])
        if "pending.features" in tensors:
            self.pending = (tensors["pending.features"], tensors["pending.h"], tensors["pending.c"])
        self.pending_action = scalars["pending_action"]
        self.errors, self.targets = scalars["errors"], scalars["targets"]
