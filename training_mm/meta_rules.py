"""The meta-controller's rules: the cautious start, the bold driver with its overshoot probe, and the divergence
reflex.

They act on the loss and on the relative update size alone; docs/meta_controller.md says why each threshold is
where it is and what was measured. In the ablation of benchmarks/bench_meta_controller.py these rules alone are
the `rules` arm.
"""

import math

from .meta_signals import mean, slope_t_statistic, t_statistic


# |t-statistic| a window's evidence needs before it moves the controller.
SIGNIFICANCE = 3.0
# Cautious start and bold-driver growth: the multiplier starts at START_MULTIPLIER and grows RAMP_FACTOR-fold per
# decision, up to GROWTH_CAP, while the log loss of the last TREND_WINDOWS windows falls (least-squares slope,
# t <= -GROWTH_SIGNIFICANCE: more likely falling than not, because each such step is then probed, see below).
# A smaller step, topping up to the cap or the ceiling, gains little: it waits for a significant fall
# (t <= -SIGNIFICANCE) and is not probed.
START_MULTIPLIER = 0.1
RAMP_FACTOR = math.sqrt(2)
GROWTH_CAP = 1.0
TREND_WINDOWS = 3
GROWTH_SIGNIFICANCE = 1.0
# Beyond GROWTH_CAP the bold driver grows the multiplier only while a step moves the weights by less than this
# fraction of their norm at the schedule's peak (`min_update_ratio`) ...
MIN_UPDATE_RATIO = 5e-3
# ... measured only on steps whose scheduled LR is at least this fraction of the peak.
MIN_SCHEDULE_FACTOR = 0.1
# Divergence reflex: loss above SPIKE_FACTOR x its EMA, beyond SPIKE_DEVIATIONS EMA standard deviations
# (log scale, EMA over ~1 / (1 - LOSS_EMA_DECAY) = 10 steps).
SPIKE_FACTOR = 2.0
SPIKE_DEVIATIONS = 3.0
LOSS_EMA_DECAY = 0.9
CUT_FACTOR = 0.5
# Overshoot probe: each full bold-driver ramp step is judged by the PROBE_WINDOWS windows that follow it. If their
# log loss sits above the window before the growth (one-sided Welch t >= OVERSHOOT_SIGNIFICANCE: the loss was falling
# significantly when the driver grew it), or any cut happens meanwhile, the growth overshot: the multiplier is
# halved and the one before the growth becomes a ceiling that no later growth passes.
PROBE_WINDOWS = 2
OVERSHOOT_SIGNIFICANCE = 2.0


def is_spike(deviation, loss_var):
    """Whether a step's log loss, `deviation` above its EMA, is a blow-up to cut at once."""
    return deviation > math.log(SPIKE_FACTOR) + SPIKE_DEVIATIONS * math.sqrt(loss_var)


def bold_driver(window_log_loss, prev_window_log_loss, recent_log_loss, interval, update_ratios, min_update_ratio,
                multiplier, ceiling=math.inf, probing=False):  # fmt: skip
    """The factor the bold driver applies to the multiplier after a decision (1.0: leave it).

    A loss that rose significantly over a whole window (a gradual blow-up) halves the multiplier; one that keeps
    falling over TREND_WINDOWS windows grows it towards GROWTH_CAP, and beyond while the updates are small (mean
    relative update size below `min_update_ratio`), never past `ceiling` and not while the last ramp step is still
    being probed (`probing`).
    """
    if t_statistic(window_log_loss, prev_window_log_loss) >= SIGNIFICANCE:
        return CUT_FACTOR
    if probing:
        return 1.0
    slope = slope_t_statistic(recent_log_loss) if len(recent_log_loss) == TREND_WINDOWS * interval else 0.0
    if slope <= -GROWTH_SIGNIFICANCE:
        slow = bool(update_ratios) and mean(update_ratios) < min_update_ratio
        factor = RAMP_FACTOR if slow else min(RAMP_FACTOR, GROWTH_CAP / multiplier)
        factor = min(factor, ceiling / multiplier)
        if factor >= RAMP_FACTOR or (factor > 1 and slope <= -SIGNIFICANCE):
            return factor
    return 1.0


def overshot(log_loss_since_growth, log_loss_before_growth):
    """Whether the log loss since a growth of the multiplier sits significantly above the window before it."""
    return t_statistic(log_loss_since_growth, log_loss_before_growth) >= OVERSHOOT_SIGNIFICANCE


def loss_plateaued(recent_log_loss, interval):
    """Whether the last TREND_WINDOWS windows of log loss no longer fall significantly (staged training)."""
    return len(recent_log_loss) == TREND_WINDOWS * interval and slope_t_statistic(recent_log_loss) > -SIGNIFICANCE
