"""MMForClassification: every fusion type x problem type learns and round-trips; items with different subsets of
modalities in one batch score as they do alone; modality dropout is a training-only thing; an MMModel checkpoint's
towers are reused; bad input is refused with the reason."""

import pytest
import torch
from transformers.testing_utils import CaptureLogger
from transformers.utils import logging

from configuration_mm import MMConfig
from modeling_mm import MMForClassification, MMModel
from training_mm.classification import encode_labels, infer_tasks

FUSION_TYPES = ("late", "gated", "concat", "cross")
N = 6  # items of the tiny learnable task


def tiny_config(fusion_type="concat", modality_dropout=0.0, **overrides):
    fusion = {"fusion_type": fusion_type, "modality_dropout": modality_dropout}
    return MMConfig.from_preset("tiny", fusion_encoder_config=fusion, **overrides)


def tiny_inputs(n=N, seed=0):
    """Text, images and audio for `n` items, with padded texts and clips of different lengths."""
    generator = torch.Generator().manual_seed(seed)
    attention_mask = torch.ones(n, 7, dtype=torch.long)
    attention_mask[1::2, 4:] = 0
    audio_attention_mask = torch.ones(n, 40, dtype=torch.long)
    audio_attention_mask[::3, 26:] = 0
    return {
        "input_ids": torch.randint(3, 512, (n, 7), generator=generator) * attention_mask,
        "attention_mask": attention_mask,
        "pixel_values": torch.randn(n, 3, 32, 32, generator=generator),
        "input_features": torch.randn(n, 32, 40, generator=generator) * audio_attention_mask[:, None],
        "audio_attention_mask": audio_attention_mask,
    }


def tiny_labels(problem_type, n=N):
    if problem_type == "single_label_classification":
        return torch.arange(n) % 3
    if problem_type == "multi_label_classification":
        return (torch.arange(n)[:, None] + torch.arange(3)[None, :]) % 2 == 0
    return torch.linspace(-1.0, 1.0, n)


@pytest.mark.parametrize("fusion_type", FUSION_TYPES)
def test_every_fusion_and_problem_type_learns_and_round_trips(fusion_type, tmp_path):
    """One head per problem type on one fused representation: each task's loss falls, and the saved model scores
    as the trained one."""
    torch.manual_seed(0)
    tasks = {
        "single": {"problem_type": "single_label_classification", "labels": ["a", "b", "c"]},
        "multi": {"problem_type": "multi_label_classification", "labels": ["x", "y", "z"]},
        "value": {"problem_type": "regression", "num_labels": 1},
    }
    model = MMForClassification(tiny_config(fusion_type, tasks=tasks))
    inputs = tiny_inputs()
    labels = {name: tiny_labels(spec["problem_type"]) for name, spec in tasks.items()}
    labels["multi"] = labels["multi"].float()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    losses = []
    for _ in range(10):
        out = model(**inputs, labels=labels)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append({name: loss.item() for name, loss in out.task_losses.items()})
    for name in tasks:
        assert losses[-1][name] < 0.9 * losses[0][name], (name, [round(step[name], 3) for step in losses])

    model.eval()
    model.save_pretrained(tmp_path)
    loaded = MMForClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        expected, got = model(**inputs).task_logits, loaded(**inputs).task_logits
    for name, spec in tasks.items():
        assert got[name].shape == (N, spec.get("num_labels", 3))
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-6)
    assert loaded.config.fusion_encoder_config.fusion_type == fusion_type
    assert loaded.config.tasks == model.config.tasks


@pytest.mark.parametrize("fusion_type", FUSION_TYPES)
def test_items_with_different_modalities_in_one_batch_score_as_alone(fusion_type):
    torch.manual_seed(0)
    model = MMForClassification(tiny_config(fusion_type, num_labels=3)).eval()
    inputs = tiny_inputs()
    # Every non-empty subset of the three modalities but one, across the six items.
    has = {
        "text": torch.tensor([1, 1, 0, 1, 0, 0], dtype=torch.bool),
        "image": torch.tensor([1, 0, 1, 1, 1, 0], dtype=torch.bool),
        "audio": torch.tensor([1, 1, 1, 0, 0, 1], dtype=torch.bool),
    }
    with torch.no_grad():
        batch = model(**inputs, has_text=has["text"], has_image=has["image"], has_audio=has["audio"]).logits
        for i in range(N):
            alone = {}
            if has["text"][i]:
                length = int(inputs["attention_mask"][i].sum())
                alone.update(
                    input_ids=inputs["input_ids"][i : i + 1, :length],
                    attention_mask=inputs["attention_mask"][i : i + 1, :length],
                )
            if has["image"][i]:
                alone["pixel_values"] = inputs["pixel_values"][i : i + 1]
            if has["audio"][i]:
                frames = int(inputs["audio_attention_mask"][i].sum())
                alone.update(
                    input_features=inputs["input_features"][i : i + 1, :, :frames],
                    audio_attention_mask=inputs["audio_attention_mask"][i : i + 1, :frames],
                )
            torch.testing.assert_close(model(**alone).logits[0], batch[i], rtol=0, atol=1e-5)
        # An absent modality is masked, not zero-filled: its tensor's content for that item does not matter.
        changed = {**inputs, "pixel_values": inputs["pixel_values"].clone()}
        changed["pixel_values"][~has["image"]] = 7.0
        again = model(**changed, has_text=has["text"], has_image=has["image"], has_audio=has["audio"]).logits
    torch.testing.assert_close(again, batch, rtol=0, atol=1e-6)


def test_modality_dropout_acts_in_training_only():
    torch.manual_seed(0)
    config = tiny_config("concat", modality_dropout=0.6, num_labels=3)
    model = MMForClassification(config)
    reference = MMForClassification(tiny_config("concat", num_labels=3))
    reference.load_state_dict(model.state_dict())
    inputs = tiny_inputs()
    model.eval()
    reference.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, reference(**inputs).logits, rtol=0, atol=0)
        model.train()
        torch.manual_seed(1)
        trained_view = model(**inputs).logits
    assert not torch.allclose(trained_view, reference(**inputs).logits, atol=1e-4)


def test_several_tasks_weighted_by_learned_uncertainty_and_focal_loss():
    torch.manual_seed(0)
    tasks = {
        "kind": {"problem_type": "single_label_classification", "labels": ["a", "b", "c"]},
        "tags": {"problem_type": "multi_label_classification", "labels": ["x", "y", "z"]},
        "size": {"problem_type": "regression"},
    }
    model = MMForClassification(tiny_config("cross", tasks=tasks, default_task="tags"))
    assert model.config.id2label == {0: "x", 1: "y", 2: "z"}  # the stock pipelines read the default task
    assert model.config.problem_type == "multi_label_classification"
    labels = {
        "kind": tiny_labels("single_label_classification"),
        "tags": tiny_labels("multi_label_classification").float(),
        "size": tiny_labels("regression"),
    }
    out = model(**tiny_inputs(), labels=labels)
    assert set(out.task_logits) == set(tasks) and out.logits is out.task_logits["tags"]
    # Kendall et al. 2018 at log-variance 0: regression counts half, the classification losses in full.
    expected = out.task_losses["kind"] + out.task_losses["tags"] + 0.5 * out.task_losses["size"]
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()
    assert model.task_log_variance.grad is not None and model.task_log_variance.grad.abs().sum() > 0
    loss, logits = model(**tiny_inputs(), labels={"size": labels["size"]}, return_dict=False)[:2]
    assert loss.ndim == 0 and logits.shape == (N, 3)  # a task without labels gets no loss

    # The focal loss down-weights what is already classified well: below cross-entropy, equal at gamma 0.
    focal = MMForClassification(tiny_config("cross", tasks=tasks, default_task="tags", focal_loss_gamma=2.0))
    focal.load_state_dict(model.state_dict())
    plain = focal(**tiny_inputs(), labels={"kind": labels["kind"]}).task_losses["kind"]
    model_loss = model(**tiny_inputs(), labels={"kind": labels["kind"]}).task_losses["kind"]
    assert plain < model_loss


def test_an_mmmodel_checkpoint_gives_its_towers_and_a_new_head(tmp_path):
    torch.manual_seed(0)
    base = MMModel(MMConfig.from_preset("tiny")).eval()
    base.save_pretrained(tmp_path)
    config = MMConfig.from_pretrained(tmp_path, num_labels=4)
    with CaptureLogger(logging.get_logger("modeling_mm.modeling_mm_fusion")) as captured:
        model = MMForClassification.from_pretrained(tmp_path, config=config).eval()
    assert "the fusion layers, task heads are new (untrained)" in captured.out, captured.out
    inputs = tiny_inputs()
    with torch.no_grad():
        torch.testing.assert_close(
            model.mm.get_image_features(inputs["pixel_values"]), base.get_image_features(inputs["pixel_values"])
        )
        assert model(**inputs).logits.shape == (N, 4)
    model.freeze_towers()
    assert not any(p.requires_grad for p in model.mm.parameters())
    assert all(p.requires_grad for p in model.fusion.parameters())


def test_bad_input_is_refused_with_the_reason():
    model = MMForClassification(tiny_config("concat", num_labels=3)).eval()
    inputs = tiny_inputs(2)
    with pytest.raises(ValueError, match="at least one of text"):
        model()
    with pytest.raises(ValueError, match=r"Items \[1\] have no modality"):
        model(pixel_values=inputs["pixel_values"], has_image=torch.tensor([True, False]))
    with pytest.raises(ValueError, match="fusion_type must be one of"):
        tiny_config("early")
    with pytest.raises(ValueError, match="default_task must be one of"):
        tiny_config(tasks={"a": {"problem_type": "regression"}}, default_task="b")
    with pytest.raises(ValueError, match=r"tasks\['a'\]\['problem_type'\]"):
        tiny_config(tasks={"a": {"problem_type": "ranking"}})

    rows = [{"label": "cat"}, {"label": "dog"}]
    tasks = infer_tasks(_Rows(rows), ["label"])
    assert tasks == {"label": {"problem_type": "single_label_classification", "labels": ["cat", "dog"]}}
    with pytest.raises(ValueError, match=r"Label 'bird' in column 'label' is not one of the classes"):
        encode_labels([{"label": "bird"}], "label", tasks["label"])
    with pytest.raises(ValueError, match=r"Regression column 'label' holds 'cat'"):
        infer_tasks(_Rows(rows), ["label"], problem_type="regression")
    assert infer_tasks(_Rows([{"n": 1}, {"n": 3}]), ["n"], problem_type="regression")["n"]["num_labels"] == 1
    assert infer_tasks(_Rows([{"t": ["a", "b"]}, {"t": ["c"]}]), ["t"])["t"]["labels"] == ["a", "b", "c"]


class _Rows(list):
    """The two methods of `datasets.Dataset` that `infer_tasks` uses, over a list of dicts."""

    def select_columns(self, columns):
        return _Rows({column: row[column] for column in columns} for row in self)


def test_the_pipeline_refuses_an_item_without_a_modality():
    from testers import tiny_processor

    from processing_mm.pipeline_mm_classification import MMClassificationPipeline

    clf = MMClassificationPipeline(model=MMForClassification(tiny_config(num_labels=2)).eval(), processor=tiny_processor())
    assert {out["label"] for out in clf({"text": "a red circle"})} == {"LABEL_0", "LABEL_1"}
    for item, match in (({}, "takes a dict with any of"), ({"text": None}, "got no text, image or audio"),
                        ({"video": "clip.mp4"}, r"Unknown input keys \['video'\]")):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            clf(item)
