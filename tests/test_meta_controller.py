"""MetaControllerCallback on a toy regression trained by the real `Trainer` (CPU, a few seconds per run).

On this toy the tuned learning rate is 3e-2 (AdamW, linear decay, 400 steps); 3e-3 and 3e-1 are the
"10x too low / too high" runs. `train_toy` is also what the controller's measurements were taken with.
"""

import math
import os

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments

from training_mm.meta_controller import HISTORY_COLUMNS, START_MULTIPLIER, STATE_FILE, MetaControllerCallback


TUNED_LR = 3e-2


class ToyRegressor(nn.Module):
    def __init__(self, nan_at_call=None, loss_scales=None):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 1))
        self.nan_at_call = nan_at_call  # training forward call (1-based) whose loss is NaN
        self.loss_scales = loss_scales  # cycled per training call: adversarial loss magnitudes
        self.calls = 0

    def forward(self, x, labels=None):
        loss = nn.functional.mse_loss(self.net(x).squeeze(-1), labels)
        if self.training:
            self.calls += 1
            if self.calls == self.nan_at_call:
                loss = loss * float("nan")
            if self.loss_scales:
                loss = loss * self.loss_scales[self.calls % len(self.loss_scales)]
        return {"loss": loss}


def toy_data(n, seed):
    """y = teacher(x) + noise, with a fixed random tanh teacher."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 16, generator=generator)
    teacher = torch.Generator().manual_seed(123)
    w1 = torch.randn(16, 32, generator=teacher) / 4
    w2 = torch.randn(32, generator=teacher) / 5
    y = 3 * torch.tanh(x @ w1) @ w2 + 0.1 * torch.randn(n, generator=generator)
    return [{"x": xi, "labels": yi} for xi, yi in zip(x, y)]


TRAIN, EVAL = toy_data(4096, 0), toy_data(1024, 1)


def train_toy(output_dir, lr, *callbacks, steps=400, seed=0, scheduler="linear", warmup_steps=0, model=None, **kwargs):
    """Train the toy regressor with Trainer; returns (eval loss, trainer)."""
    torch.manual_seed(seed)
    kwargs.setdefault("save_strategy", "no")
    args = TrainingArguments(
        output_dir,
        max_steps=steps,
        learning_rate=lr,
        lr_scheduler_type=scheduler,
        warmup_steps=warmup_steps,
        per_device_train_batch_size=64,
        seed=seed,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        logging_steps=50,
        **kwargs,
    )
    trainer = Trainer(
        model=model or ToyRegressor(), args=args, train_dataset=TRAIN, eval_dataset=EVAL, callbacks=list(callbacks)
    )
    trainer.train(resume_from_checkpoint=kwargs.get("resume_from_checkpoint"))
    return trainer.evaluate()["eval_loss"], trainer


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # The toy's ops are tiny: with several threads, synchronisation costs dominate (10-30x slower here).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def baselines(tmp_path_factory):
    """Eval loss without the controller, per learning rate."""
    out = tmp_path_factory.mktemp("baselines")
    return {lr: train_toy(out, lr)[0] for lr in (TUNED_LR / 10, TUNED_LR, TUNED_LR * 10)}


def test_too_low_learning_rate_is_raised(tmp_path, baselines):
    controller = MetaControllerCallback()
    loss, _ = train_toy(tmp_path, TUNED_LR / 10, controller)
    assert controller.multiplier > 3
    assert loss < 0.8 * baselines[TUNED_LR / 10]
    assert loss < 1.2 * baselines[TUNED_LR]
    # It learned this from its meta-gradient within a few windows: the first window's hypergradient says
    # "larger steps would have helped", and by step 50 the decided multiplier is already above 3.
    column = {name: i for i, name in enumerate(HISTORY_COLUMNS)}
    first, fifth = controller.history[0], controller.history[4]
    assert first[column["hypergradient"]] < -0.3
    assert fifth[column["step"]] == 50 and math.exp(fifth[column["decided_log_multiplier"]]) > 3


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_too_high_learning_rate_is_cut(tmp_path, baselines, seed):
    """From ten times the tuned rate the cautious start and the bold driver approach the rate from below; the
    overshoot probe cuts the first growth the loss punishes and keeps the multiplier under it, on every seed."""
    baseline = baselines[TUNED_LR * 10] if seed == 0 else train_toy(tmp_path / "baseline", TUNED_LR * 10, seed=seed)[0]
    controller = MetaControllerCallback()
    loss, _ = train_toy(tmp_path, TUNED_LR * 10, controller, seed=seed)
    assert controller.multiplier < 0.5
    assert controller.cuts > 0
    assert controller.ceiling < 0.5  # it learned where the rate overshoots
    assert loss < 0.5 * baseline


def test_bold_driver_growth_is_probed_and_capped():
    from training_mm.meta_rules import CUT_FACTOR, RAMP_FACTOR, bold_driver, overshot

    falling = [-0.01 * i for i in range(30)]  # three windows of a steadily falling log loss
    window, previous = falling[20:], falling[10:20]
    assert bold_driver(window, previous, falling, 10, [], 5e-3, 0.1) == RAMP_FACTOR
    assert bold_driver(window, previous, falling, 10, [], 5e-3, 0.1, probing=True) == 1.0
    assert bold_driver(window, previous, falling, 10, [], 5e-3, 0.1, ceiling=0.12) == pytest.approx(1.2)
    # A full ramp step needs only a probable fall (it is probed); a top-up to the ceiling needs a significant one.
    noisy = [v + 0.2 * (-1) ** i for i, v in enumerate(falling)]  # slope t about -2.4
    assert bold_driver(noisy[20:], noisy[10:20], noisy, 10, [], 5e-3, 0.1) == RAMP_FACTOR
    assert bold_driver(noisy[20:], noisy[10:20], noisy, 10, [], 5e-3, 0.1, ceiling=0.12) == 1.0
    rising = [v + 0.5 for v in previous]
    assert bold_driver(rising, previous, falling, 10, [], 5e-3, 0.1, probing=True) == CUT_FACTOR
    noise = [0.1 * (-1) ** i for i in range(10)]
    assert overshot([v + 0.2 for v in noise * 2], noise) and not overshot([v - 0.2 for v in noise * 2], noise)


def test_overshoot_probe_and_ceiling_are_resumed(tmp_path):
    lr, common = TUNED_LR * 10, {"steps": 60, "save_strategy": "steps", "save_steps": 30}
    controller = MetaControllerCallback()
    _, uninterrupted = train_toy(tmp_path, lr, controller, **common)
    resumed_controller = MetaControllerCallback()
    checkpoint = tmp_path / "checkpoint-30"
    restored = MetaControllerCallback()
    restored.load(checkpoint)
    assert restored.probe is not None  # the bold driver grew at step 30: the checkpoint holds an open probe
    _, resumed = train_toy(tmp_path, lr, resumed_controller, resume_from_checkpoint=str(checkpoint), **common)
    assert (resumed_controller.probe, resumed_controller.ceiling) == (controller.probe, controller.ceiling)
    assert_same_state(SnapshotAtStep(resumed_controller, 60).take(), SnapshotAtStep(controller, 60).take())
    assert all(torch.equal(uninterrupted.model.state_dict()[k], v) for k, v in resumed.model.state_dict().items())


def test_tuned_learning_rate_is_not_hurt(tmp_path, baselines):
    controller = MetaControllerCallback()
    spy = LearningRateSpy(controller)
    loss, trainer = train_toy(tmp_path, TUNED_LR, controller, spy)
    assert 0.3 < controller.multiplier < 3
    assert loss < 1.1 * baselines[TUNED_LR]
    # Cautious start: the first steps run at x0.1 of the schedule, and the controller brings the run back to it.
    lr, scheduled, multiplier = spy.rows[0]
    assert multiplier == START_MULTIPLIER and lr == pytest.approx(scheduled * START_MULTIPLIER)
    assert 0.7 < spy.rows[99][2] < 1.5
    # The multiplier and the meta-objective are in the Trainer logs (hence in trainer_state.json).
    train_logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert all({"meta_lr_multiplier", "meta_hypergradient", "meta_loss"} <= entry.keys() for entry in train_logs)


def test_growth_beyond_x1_needs_small_updates(tmp_path):
    # At the tuned LR each step moves the toy's weights by ~2% of their norm (scaled to the schedule's peak):
    # above the default min_update_ratio, so a falling loss does not grow the multiplier beyond x1 (see
    # test_tuned_learning_rate_is_not_hurt). Declaring every update "small" lets the bold driver grow it.
    default, greedy = MetaControllerCallback(), MetaControllerCallback(min_update_ratio=1.0)
    _, trainer = train_toy(tmp_path / "default", TUNED_LR, default)
    train_toy(tmp_path / "greedy", TUNED_LR, greedy)
    ratios = [entry["meta_update_ratio"] for entry in trainer.state.log_history if "meta_update_ratio" in entry]
    assert len(ratios) >= 7 and min(ratios) > default.config["min_update_ratio"]
    assert default.multiplier < 1.5
    column = HISTORY_COLUMNS.index("decided_log_multiplier")
    assert max(math.exp(row[column]) for row in greedy.history) > 3
    # Beyond x2.5 the toy's loss rose after a ramp step: the overshoot probe cut it and keeps it below.
    assert greedy.cuts > 0 and greedy.multiplier <= greedy.ceiling < 3


class LearningRateSpy(TrainerCallback):
    """Records, just before each optimizer step, the learning rate the step will use and the schedule's own."""

    def __init__(self, controller):
        self.controller = controller
        self.rows = []

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
        self.rows.append((optimizer.param_groups[0]["lr"], lr_scheduler.get_last_lr()[0], self.controller.multiplier))


def test_learning_rate_stays_finite_and_positive_under_adversarial_losses(tmp_path):
    # Loss magnitudes jumping over 20 orders of magnitude, unclipped gradients, warmup then cosine decay.
    controller = MetaControllerCallback(interval=3)
    spy = LearningRateSpy(controller)
    model = ToyRegressor(loss_scales=[1e-10, 1e10, 1.0, 1e5, 1e-5, 1e8])
    torch.manual_seed(0)
    args = TrainingArguments(
        tmp_path,
        max_steps=120,
        learning_rate=1e-2,
        lr_scheduler_type="cosine",
        warmup_steps=20,
        max_grad_norm=0.0,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        save_strategy="no",
    )
    Trainer(model=model, args=args, train_dataset=TRAIN, callbacks=[controller, spy]).train()

    assert len(spy.rows) == 120
    for lr, scheduled, multiplier in spy.rows[1:]:  # step 1 runs at the warmup's initial 0
        assert math.isfinite(lr) and lr > 0
        assert 1e-2 <= multiplier <= 1e2
        # The multiplier sits on top of the schedule, which keeps stepping its own values.
        assert lr == pytest.approx(scheduled * multiplier, rel=1e-6)
    assert len({multiplier for *_, multiplier in spy.rows}) > 5  # the controller did act on these signals


def test_non_finite_loss_stops_before_any_nan_weights_are_written(tmp_path):
    model = ToyRegressor(nan_at_call=8)
    with pytest.raises(FloatingPointError, match=r"Training loss is nan at step 8.*Lower `learning_rate`"):
        train_toy(tmp_path, TUNED_LR, MetaControllerCallback(), model=model, save_strategy="steps", save_steps=5)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-5"]
    saved = load_file(tmp_path / "checkpoint-5" / "model.safetensors")
    assert all(torch.isfinite(tensor).all() for tensor in saved.values())
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the NaN step was never applied


class SnapshotAtStep(TrainerCallback):
    """Copies the controller's state when training (re)starts or when it saves at `step`."""

    def __init__(self, controller, step):
        self.controller, self.step, self.snapshot = controller, step, None

    def take(self):
        c = self.controller
        weights = {k: v.clone() for k, v in {**c.lstm.state_dict(), **c.head.state_dict()}.items()}
        return c.multiplier, [list(row) for row in c.history], weights, c.hidden[0].clone()

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            self.snapshot = self.take()

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            self.snapshot = self.take()


def assert_same_state(a, b):
    multiplier_a, history_a, weights_a, hidden_a = a
    multiplier_b, history_b, weights_b, hidden_b = b
    assert multiplier_a == multiplier_b
    assert torch.equal(torch.tensor(history_a), torch.tensor(history_b))  # NaN-free here
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    assert torch.equal(hidden_a, hidden_b)


def test_resume_restores_the_controller_and_continues_identically(tmp_path):
    lr, common = TUNED_LR / 10, {"steps": 60, "save_strategy": "steps", "save_steps": 30}

    controller = MetaControllerCallback()
    saved = SnapshotAtStep(controller, 30)
    _, uninterrupted = train_toy(tmp_path, lr, controller, saved, **common)
    assert controller.multiplier != 1.0 and len(controller.history) == 6  # something worth restoring
    assert (tmp_path / "checkpoint-30" / STATE_FILE).is_file()
    final = SnapshotAtStep(controller, 60).take()
    final_weights = {k: v.clone() for k, v in uninterrupted.model.state_dict().items()}

    # A new process would build a new callback with the same arguments and resume from the checkpoint.
    controller = MetaControllerCallback()
    restored = SnapshotAtStep(controller, 30)
    checkpoint = str(tmp_path / "checkpoint-30")
    _, resumed = train_toy(tmp_path, lr, controller, restored, resume_from_checkpoint=checkpoint, **common)
    assert_same_state(restored.snapshot, saved.snapshot)
    assert_same_state(SnapshotAtStep(controller, 60).take(), final)
    assert all(torch.equal(final_weights[k], v) for k, v in resumed.model.state_dict().items())


def test_resume_from_a_checkpoint_without_controller_state_continues_at_x1(tmp_path, caplog):
    """A run checkpointed without the controller gains one on resume: it starts afresh at x1 (not the cautious
    start), says so, and keeps deciding to the end."""
    common = {"steps": 60, "save_strategy": "steps", "save_steps": 30}
    train_toy(tmp_path, TUNED_LR, **common)
    controller = MetaControllerCallback()
    checkpoint = str(tmp_path / "checkpoint-30")
    with caplog.at_level("WARNING"):
        loss, _ = train_toy(tmp_path, TUNED_LR, controller, resume_from_checkpoint=checkpoint, **common)
    assert "starts afresh at x1" in caplog.text
    assert math.isfinite(loss) and len(controller.history) == 3
    assert controller.history[0][0] == 40 and controller.peak_lr == pytest.approx(TUNED_LR)


def test_resume_with_different_arguments_is_refused(tmp_path):
    MetaControllerCallback(hidden_size=8).save(tmp_path)
    with pytest.raises(ValueError, match="hidden_size.*same arguments"):
        MetaControllerCallback(hidden_size=16).load(tmp_path)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"interval": 1}, "interval"),
        ({"min_multiplier": 2.0}, "min_multiplier=2.0"),
        ({"max_multiplier": 0.5}, "max_multiplier=0.5"),
        ({"meta_learning_rate": 0.0}, "meta_learning_rate"),
        ({"min_update_ratio": -1.0}, "min_update_ratio"),
    ],
)
def test_bad_arguments_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MetaControllerCallback(**kwargs)


# ---- rules only, the learned policies, architectural adaptations, the benchmark's anchors ----------------------


def test_rules_only_has_no_learned_part_and_waits_for_the_loss_trend(tmp_path):
    """policy="rules" (the ablation's rules-only arm): the hypergradient that lets the full controller raise a too
    low LR within two windows does not move it; only the bold driver does, once it has TREND_WINDOWS windows."""
    rules, full = MetaControllerCallback(policy="rules"), MetaControllerCallback()
    train_toy(tmp_path / "rules", TUNED_LR / 10, rules, steps=30)
    train_toy(tmp_path / "full", TUNED_LR / 10, full, steps=30)
    column = HISTORY_COLUMNS.index("decided_log_multiplier")
    assert [math.exp(row[column]) for row in rules.history[:2]] == pytest.approx([START_MULTIPLIER] * 2)
    assert math.exp(full.history[1][column]) > 2 * START_MULTIPLIER
    assert rules.policy is None and not hasattr(rules, "lstm")
    rules.save(tmp_path)
    restored = MetaControllerCallback(policy="rules")
    restored.load(tmp_path)
    assert restored.multiplier == rules.multiplier and restored.history == rules.history
    with pytest.raises(ValueError, match="policy.*same arguments"):
        MetaControllerCallback().load(tmp_path)


def test_trend_policy_trains_and_resumes_identically(tmp_path):
    lr, common = TUNED_LR / 10, {"steps": 60, "save_strategy": "steps", "save_steps": 30}
    controller = MetaControllerCallback(policy="trend")
    _, uninterrupted = train_toy(tmp_path, lr, controller, **common)
    assert len(controller.policy.targets) == 5  # it learned from every window after the first decision
    final = SnapshotAtStep(controller, 60).take()
    resumed_controller = MetaControllerCallback(policy="trend")
    checkpoint = str(tmp_path / "checkpoint-30")
    _, resumed = train_toy(tmp_path, lr, resumed_controller, resume_from_checkpoint=checkpoint, **common)
    assert_same_state(SnapshotAtStep(resumed_controller, 60).take(), final)
    assert all(torch.equal(uninterrupted.model.state_dict()[k], v) for k, v in resumed.model.state_dict().items())


def test_contrastive_pair_weights_weight_the_pairs_and_default_to_the_mean():
    from configuration_mm import MMConfig
    from modeling_mm import MMModel

    torch.manual_seed(0)
    model = MMModel(MMConfig.from_preset("tiny"))
    generator = torch.Generator().manual_seed(0)
    batch = dict(
        input_ids=torch.randint(4, 400, (4, 8), generator=generator),
        pixel_values=torch.randn(4, 3, 32, 32, generator=generator),
        input_features=torch.randn(4, 32, 50, generator=generator),
        return_loss=True,
    )
    all_pairs = model(**batch).loss
    image_text = model(**{k: v for k, v in batch.items() if k != "input_features"}).loss
    model.config.contrastive_pair_weights = {"image_text": 1.0, "audio_text": 1.0, "audio_image": 1.0}
    torch.testing.assert_close(model(**batch).loss, all_pairs)
    model.config.contrastive_pair_weights = {"image_text": 2.0, "audio_text": 0.0, "audio_image": 0.0}
    torch.testing.assert_close(model(**batch).loss, image_text)
    with pytest.raises(ValueError, match="contrastive_pair_weights.*'image_video'"):
        MMConfig.from_preset("tiny", contrastive_pair_weights={"image_video": 1.0})


class AudioWeightSpy(TrainerCallback):
    """Records the first audio-tower weight when training begins and after each step."""

    def __init__(self):
        self.at_step = {}

    def record(self, state, model):
        self.at_step[state.global_step] = next(model.audio_model.parameters()).detach().clone()

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.record(state, model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.record(state, model)


def train_tiny_mm(output_dir, *callbacks, steps=12, **kwargs):
    """A few Trainer steps of the tiny MMModel on fixed random text/image/audio; returns the trainer."""
    from configuration_mm import MMConfig
    from modeling_mm import MMModel
    from transformers import default_data_collator

    torch.manual_seed(0)
    model = MMModel(MMConfig.from_preset("tiny"))
    model.config.modality_dropout = 0.1  # a model reading a dropout rate from its config (the hook is generic)
    generator = torch.Generator().manual_seed(0)
    rows = [
        {
            "input_ids": torch.randint(4, 400, (8,), generator=generator),
            "pixel_values": torch.randn(3, 32, 32, generator=generator),
            "input_features": torch.randn(32, 50, generator=generator) * 0.1,
        }
        for _ in range(32)
    ]
    args = TrainingArguments(
        output_dir, max_steps=steps, learning_rate=1e-3, per_device_train_batch_size=8, report_to="none",
        use_cpu=True, disable_tqdm=True, logging_steps=3, save_strategy="steps", save_steps=6, seed=0, **kwargs,
    )  # fmt: skip
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=rows,
        data_collator=lambda batch: {**default_data_collator(batch), "return_loss": True},
        callbacks=list(callbacks),
    )
    trainer.train(resume_from_checkpoint=kwargs.get("resume_from_checkpoint"))
    return trainer


ADAPTATIONS = dict(interval=3, pair_weights=True, dropout_attribute="modality_dropout", staged_modules=("audio_model",))


def test_adaptations_are_logged_recorded_in_the_config_and_resumed_exactly(tmp_path):
    import json

    controller, spy = MetaControllerCallback(**ADAPTATIONS), AudioWeightSpy()
    trainer = train_tiny_mm(tmp_path, controller, spy)
    weights = controller.adaptations.pair_weights
    assert set(weights) == {"image_text", "audio_text", "audio_image"} and len(set(weights.values())) == 3
    assert trainer.model.config.contrastive_pair_weights == weights
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    expected = {"meta_pair_weight_audio_text", "meta_modality_dropout", "meta_released_audio_model"}
    assert all(expected <= entry.keys() for entry in logs)
    # The checkpoint's config says what the model trained with.
    saved = json.loads((tmp_path / "checkpoint-6" / "config.json").read_text())
    record = saved["meta_controller_adaptations"]
    assert record["contrastive_pair_weights"] == saved["contrastive_pair_weights"]
    assert record["modality_dropout"] == saved["modality_dropout"] == 0.1
    assert record["staged_modules_released_at_step"] == {"audio_model": None}
    # The staged audio tower is held until the loss has plateaued over 3 windows, which it cannot before step 9.
    held = spy.at_step
    assert all(torch.equal(held[step], held[0]) for step in range(9))
    released = controller.adaptations.released_at["audio_model"]
    assert (released is None) == torch.equal(held[12], held[0])
    # Resume from step 6: the adaptations continue exactly as in the uninterrupted run.
    resumed_controller = MetaControllerCallback(**ADAPTATIONS)
    resumed = train_tiny_mm(tmp_path, resumed_controller, resume_from_checkpoint=str(tmp_path / "checkpoint-6"))
    assert resumed_controller.adaptations.state() == controller.adaptations.state()
    assert all(torch.equal(trainer.model.state_dict()[k], v) for k, v in resumed.model.state_dict().items())
    assert resumed.model.config.contrastive_pair_weights == weights


CLASSIFIER_TASKS = {
    "kind": {"problem_type": "single_label_classification", "labels": ["a", "b", "c"]},
    "size": {"problem_type": "regression"},
}


def train_tiny_classifier(output_dir, *callbacks, steps=12, **kwargs):
    """A few Trainer steps of a tiny two-task MMForClassification (plain sum of the task losses) on fixed random
    text and images; returns the trainer."""
    from configuration_mm import MMConfig
    from modeling_mm import MMForClassification

    torch.manual_seed(0)
    model = MMForClassification(MMConfig.from_preset("tiny", tasks=CLASSIFIER_TASKS, task_loss_weighting="sum"))
    generator = torch.Generator().manual_seed(0)
    rows = [
        {
            "input_ids": torch.randint(4, 400, (8,), generator=generator),
            "pixel_values": torch.randn(3, 32, 32, generator=generator),
            "kind": i % 3,
            "size": float(i % 5) - 2.0,
        }
        for i in range(32)
    ]

    def collate(batch):
        return {
            "input_ids": torch.stack([row["input_ids"] for row in batch]),
            "pixel_values": torch.stack([row["pixel_values"] for row in batch]),
            "labels": {"kind": torch.tensor([row["kind"] for row in batch]), "size": torch.tensor([row["size"] for row in batch])},
        }

    args = TrainingArguments(
        output_dir, max_steps=steps, learning_rate=1e-3, per_device_train_batch_size=8, report_to="none",
        use_cpu=True, disable_tqdm=True, logging_steps=3, save_strategy="steps", save_steps=6, seed=0,
        remove_unused_columns=False, **kwargs,
    )  # fmt: skip
    trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=collate, callbacks=list(callbacks))
    trainer.train(resume_from_checkpoint=kwargs.get("resume_from_checkpoint"))
    return trainer


def test_task_loss_weights_are_adapted_recorded_in_the_config_and_resumed_exactly(tmp_path):
    import json

    controller = MetaControllerCallback(interval=3, task_weights=True)
    trainer = train_tiny_classifier(tmp_path, controller)
    weights = controller.adaptations.task_weights
    assert set(weights) == set(CLASSIFIER_TASKS) and weights["kind"] != weights["size"]
    assert sum(weights.values()) / len(weights) == pytest.approx(1.0)  # the loss keeps its scale
    assert trainer.model.config.task_loss_weights == weights
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert all({"meta_task_weight_kind", "meta_task_weight_size"} <= entry.keys() for entry in logs)
    saved = json.loads((tmp_path / "checkpoint-6" / "config.json").read_text())
    assert saved["meta_controller_adaptations"]["task_loss_weights"] == saved["task_loss_weights"]
    # The model's loss weighs each task's term by them.
    model = trainer.model.eval()
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(8)])
    model.config.task_loss_weights = {"kind": 2.0, "size": 0.0}
    out = model(**batch)
    torch.testing.assert_close(out.loss, 2 * out.task_losses["kind"])
    # Resume from step 6: the weights continue exactly as in the uninterrupted run.
    resumed_controller = MetaControllerCallback(interval=3, task_weights=True)
    resumed = train_tiny_classifier(tmp_path, resumed_controller, resume_from_checkpoint=str(tmp_path / "checkpoint-6"))
    assert resumed_controller.adaptations.state() == controller.adaptations.state()
    assert resumed.model.config.task_loss_weights == weights


def test_task_weights_need_a_multi_task_model(tmp_path):
    with pytest.raises(ValueError, match="task_weights=True.*two or more `tasks`"):
        train_tiny_mm(tmp_path, MetaControllerCallback(task_weights=True), steps=1)


def test_modality_dropout_rises_when_the_eval_metric_worsens_while_the_loss_falls():
    from types import SimpleNamespace

    from training_mm.meta_adaptations import DROPOUT_STEP, Adaptations

    model = SimpleNamespace(config=SimpleNamespace(modality_dropout=0.1), named_parameters=lambda: iter(()))
    adaptations = Adaptations(dropout_attribute="modality_dropout")
    adaptations.begin(model, fresh=True)
    logs = adaptations.decide(model, 10, loss_plateaued=False, loss_fell=True, eval_trend=-0.05)  # eval improved
    assert logs["meta_modality_dropout"] == model.config.modality_dropout == 0.1
    adaptations.decide(model, 20, loss_plateaued=False, loss_fell=True, eval_trend=0.05)  # eval got worse
    assert model.config.modality_dropout == pytest.approx(0.1 + DROPOUT_STEP)
    assert model.config.meta_controller_adaptations == {"modality_dropout": model.config.modality_dropout}
    with pytest.raises(ValueError, match="no attribute 'fusion_dropout'"):
        Adaptations(dropout_attribute="fusion_dropout").begin(model, fresh=True)

    # MMForClassification keeps its rate in a sub-config: a dotted path reaches it.
    from configuration_mm import MMConfig

    config = MMConfig.from_preset("tiny", fusion_encoder_config={"modality_dropout": 0.2})
    classifier = SimpleNamespace(config=config, named_parameters=lambda: iter(()))
    adaptations = Adaptations(dropout_attribute="fusion_encoder_config.modality_dropout")
    adaptations.begin(classifier, fresh=True)
    adaptations.decide(classifier, 10, loss_plateaued=False, loss_fell=True, eval_trend=0.05)
    assert classifier.config.fusion_encoder_config.modality_dropout == pytest.approx(0.2 + DROPOUT_STEP)


def test_anchor_optimizers_of_the_benchmark_build_and_step(tmp_path):
    """The ablation's anchors: Prodigy through Trainer's `optimizers=`, Schedule-Free AdamW through `optim=`."""
    from importlib.util import module_from_spec, spec_from_file_location
    from pathlib import Path

    from prodigyopt import Prodigy
    from schedulefree import AdamWScheduleFree

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_meta_controller.py"
    spec = spec_from_file_location("bench_meta_controller", path)
    bench = module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = dict(max_steps=5, per_device_train_batch_size=64, report_to="none", use_cpu=True, disable_tqdm=True)
    prodigy = bench.prodigy_trainer(Trainer)(
        model=ToyRegressor(), args=TrainingArguments(tmp_path / "p", learning_rate=1.0, **args), train_dataset=TRAIN
    )
    before = [p.clone() for p in prodigy.model.parameters()]
    prodigy.train()
    assert isinstance(prodigy.optimizer.optimizer, Prodigy)
    assert any(not torch.equal(a, b) for a, b in zip(before, prodigy.model.parameters()))
    free = Trainer(
        model=ToyRegressor(),
        args=TrainingArguments(tmp_path / "s", learning_rate=TUNED_LR, optim="schedule_free_adamw", **args),
        train_dataset=TRAIN,
        eval_dataset=EVAL,
    )
    free.train()
    assert isinstance(free.optimizer.optimizer, AdamWScheduleFree)
    assert math.isfinite(free.evaluate()["eval_loss"])
