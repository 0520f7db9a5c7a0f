"""What the scripts do with their `Trainer` besides building it: build the meta-controller and order it ahead of the
reporting integrations, train and collect the losses, and read the hyper-parameters the model card reports."""

from transformers.integrations import INTEGRATION_TO_CALLBACK


def run_before_reporting(trainer, callback):
    """Moves `callback` (already one of the trainer's) ahead of the `report_to` integrations (TensorBoard, W&B, ...),
    so that what it adds to the logs in `on_log` (the meta-controller's `meta_*` values) reaches them too.

    `Trainer` lists its callbacks as DefaultFlowCallback, the integrations, then the `callbacks` it was given, and
    `CallbackHandler` calls them in that order, so by default the integrations have written each log before a user
    callback sees it.
    """
    callbacks = trainer.callback_handler.callbacks
    callbacks.remove(callback)
    reporting = tuple(INTEGRATION_TO_CALLBACK.values())
    first = next((i for i, other in enumerate(callbacks) if isinstance(other, reporting)), len(callbacks))
    callbacks.insert(first, callback)


META_CONTROLLER_HELP = (
    "Scale the learning rate with training_mm.meta_controller.MetaControllerCallback. From trained weights "
    "(--model_name_or_path, --*_encoder) it never raises the LR beyond the schedule on small updates alone "
    "(min_update_ratio=0)."
)


def meta_controller_callback(pretrained, **kwargs):
    """The scripts' `--meta_controller` callback (`kwargs` go to `MetaControllerCallback`). Starting from trained
    weights (`pretrained`), a small learning rate is deliberate: the controller may cut it and bring it back, but not
    raise it beyond the schedule on small updates alone (`min_update_ratio=0`)."""
    from .meta_controller import MIN_UPDATE_RATIO, MetaControllerCallback

    return MetaControllerCallback(min_update_ratio=0.0 if pretrained else MIN_UPDATE_RATIO, **kwargs)


def train_and_collect_losses(trainer, resume):
    """Trains (from the `resume` checkpoint, if any); returns `train_loss` and, when there was an evaluation, the
    last `eval_loss`."""
    train_result = trainer.train(resume_from_checkpoint=resume)
    metrics = {"train_loss": train_result.training_loss}
    eval_losses = [entry["eval_loss"] for entry in trainer.state.log_history if "eval_loss" in entry]
    if eval_losses:
        metrics["eval_loss"] = eval_losses[-1]
    return metrics


def trainer_hyperparameters(trainer):
    """The card's hyper-parameter rows every script reports, read from the trainer after training."""
    args = trainer.args
    return {
        "learning_rate": args.learning_rate,
        "lr_scheduler_type": str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)),
        "warmup_steps": args.warmup_steps,
        "weight_decay": args.weight_decay,
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "processes": args.world_size,
        "optimizer steps": trainer.state.global_step,
        "epochs": round(trainer.state.epoch or 0, 2),
        "seed": args.seed,
    }
