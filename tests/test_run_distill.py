"""Knowledge distillation: the loss (zero when the student's logits are the teacher's, gradients otherwise) and
examples/run_distill.py end to end on tiny settings (a smaller student, trained with and without the teacher, recall
of all three reported, the distilled student saved, a non-empty output folder refused before training)."""

import json

import pytest
import torch
from huggingface_hub import ModelCard
from testers import TINY_RUN, tiny_processor

import run_distill
from configuration_mm import MMConfig
from modeling_mm import MMModel
from modeling_mm.modeling_mm import MMOutput
from training_mm.retrieval import PROTOCOL
from training_mm.distillation import distillation_loss


def test_distillation_loss_is_zero_for_the_teachers_logits_and_pulls_towards_them():
    teacher = MMOutput(logits_per_image=torch.randn(4, 4, generator=torch.Generator().manual_seed(0)) * 5)
    same = MMOutput(logits_per_image=teacher.logits_per_image.clone())
    assert distillation_loss(same, teacher).item() == pytest.approx(0.0, abs=1e-6)
    student_logits = torch.zeros(4, 4, requires_grad=True)
    optimizer = torch.optim.Adam([student_logits], lr=0.1)
    losses = []
    for _ in range(200):  # descending the loss brings the student's rows and columns to the teacher's softmax
        loss = distillation_loss(MMOutput(logits_per_image=student_logits), teacher, temperature=2.0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[0] > 0.1 and losses[-1] < 0.01 * losses[0]
    assert (student_logits.argmax(dim=1) == teacher.logits_per_image.argmax(dim=1)).all()
    with pytest.raises(ValueError, match="no logit matrix"):
        distillation_loss(MMOutput(), teacher)


def test_example_distills_a_smaller_student_and_reports_all_three(builtin_data, tmp_path, capsys):
    teacher_dir = tmp_path / "teacher"
    processor = tiny_processor()
    wide = dict(hidden_size=64, intermediate_size=128)
    config = MMConfig.from_preset(
        "tiny", text_config={"vocab_size": len(processor.tokenizer), **wide}, vision_config=wide, audio_config=wide,
        projection_dim=48,
    )  # fmt: skip
    torch.manual_seed(0)
    MMModel(config).save_pretrained(teacher_dir)
    processor.save_pretrained(teacher_dir)
    output_dir = tmp_path / "student"
    argv = ["--teacher_name_or_path", str(teacher_dir), *TINY_RUN, "--min_retrieval_gallery", "1", "--output_dir", str(output_dir)]
    metrics = run_distill.main(argv)

    assert metrics["student parameters"] < metrics["teacher parameters"] / 2
    for who in ("teacher", "student", "student without teacher"):
        assert 0 <= metrics[f"{who} recall@1 text->image"] <= metrics[f"{who} recall@10 text->image"] <= 1
    table = capsys.readouterr().out
    assert "| teacher |" in table and "| student, distilled (weight 0.5) |" in table and "| student without teacher |" in table
    student = MMModel.from_pretrained(output_dir)
    assert student.config.text_config.hidden_size == 32 and student.config.projection_dim == 32  # the tiny preset's
    assert student.config.vision_config.image_size == 32 and student.config.text_config.vocab_size == len(processor.tokenizer)
    results = json.loads((output_dir / "all_results.json").read_text())
    assert results["recall@1 text->image"] == pytest.approx(metrics["student recall@1 text->image"])
    # The card's model-index holds the distilled student's figures, each naming the split and the protocol.
    card = ModelCard.load(output_dir / "README.md")
    reported = {result.metric_name: result.metric_value for result in card.data.eval_results}
    distilled = {k.removeprefix("student "): v for k, v in metrics.items() if k.startswith("student ") and "->" in k}
    assert reported == pytest.approx({k: v for k, v in distilled.items() if not k.startswith("without teacher")})
    assert {(r.dataset_split, r.metric_config) for r in card.data.eval_results} == {("test", PROTOCOL)}
    with pytest.raises(FileExistsError, match="--overwrite_output_dir"):
        run_distill.main(argv)  # the output guard: refused before training
