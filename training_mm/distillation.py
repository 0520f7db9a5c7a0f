"""Knowledge distillation of an mm contrastive model into a smaller student (examples/run_distill.py).

The student learns the teacher's similarity logits: for every pair of modalities both models score in a batch
(text-image, audio-text, audio-image), the KL divergence from the teacher's softmax over each row and each column of
the (B, B) logit matrix to the student's, at a temperature (Hinton et al. 2015, applied to CLIP's in-batch logits as
in CLIP-KD, Yang et al. 2024). Matching logits rather than embeddings lets the student have a narrower projection
than the teacher. The student's own contrastive loss on the labels is kept, weighted `1 - distill_weight`.
"""

import torch
import torch.nn.functional as F
from transformers import Trainer

LOGIT_PAIRS = ("logits_per_image", "logits_per_audio", "logits_per_audio_image")


def distillation_loss(student_outputs, teacher_outputs, temperature: float = 1.0) -> torch.Tensor:
    """Mean over the logit matrices both outputs have, and over their rows and columns, of
    `KL(softmax(teacher / T) || softmax(student / T)) * T**2` (the T² keeps gradients comparable across T)."""
    losses = []
    for name in LOGIT_PAIRS:
        student, teacher = getattr(student_outputs, name), getattr(teacher_outputs, name)
        if student is None or teacher is None:
            continue
        for s, t in ((student, teacher), (student.t(), teacher.t())):
            log_student = F.log_softmax(s.float() / temperature, dim=-1)
            log_teacher = F.log_softmax(t.float() / temperature, dim=-1)
            losses.append(F.kl_div(log_student, log_teacher, log_target=True, reduction="batchmean") * temperature**2)
    if not losses:
        raise ValueError(
            "The student and the teacher share no logit matrix to distill (both need text and image and/or audio in "
            "the batch)."
        )
    return torch.stack(losses).mean()


class DistillationTrainer(Trainer):
    """`Trainer` whose loss is `(1 - distill_weight) * the student's contrastive loss + distill_weight *
    distillation_loss(student, teacher)`; the teacher runs frozen, in eval mode, on the same batch.
    `distill_weight=0` trains the student alone (the comparison run)."""

    def __init__(self, *args, teacher, distill_weight: float, temperature: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        if not 0 <= distill_weight <= 1:
            raise ValueError(f"distill_weight must be in [0, 1], got {distill_weight!r}.")
        self.teacher = teacher.eval().requires_grad_(False).to(self.args.device)
        self.distill_weight, self.temperature = distill_weight, temperature

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs)
        loss = outputs.loss
        if self.distill_weight > 0:
            with torch.no_grad():
                teacher_outputs = self.teacher(**{**inputs, "return_loss": False})
            distilled = distillation_loss(outputs, teacher_outputs, self.temperature)
            loss = (1 - self.distill_weight) * loss + self.distill_weight * distilled
        return (loss, outputs) if return_outputs else loss
