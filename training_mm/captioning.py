"""Captioning for training and evaluation (examples/run_captioning.py, run_lora.py --task captioning): batching rows
for `MMForConditionalGeneration`, generating captions, and each row's reference captions.

Example:
```python
>>> collator = CaptioningCollator(processor, "image")
>>> trainer = Trainer(model=model, args=args, train_dataset=train, data_collator=collator)
>>> captions = generate_captions(model, processor, rows, "image", batch_size=64, generate_kwargs={"num_beams": 1})
>>> caption_metrics(captions, reference_captions(rows, test_split))  # training_mm.caption_metrics
```
"""

from collections import defaultdict

from datasets import IterableDataset

from .evaluation import run_in_batches
from .media_inputs import media_inputs

# The pipeline task (and the model card's task) of a captioner, by the modality it captions from.
PIPELINE_TASKS = {"image": "image-to-text", "audio": "automatic-speech-recognition"}


class CaptioningCollator:
    """Rows -> `MMForConditionalGeneration.forward` arguments: the processed image or audio, the caption as
    `input_ids`, and `labels` = the caption's ids with -100 at padding (the model shifts them)."""

    def __init__(self, processor, modality):
        self.processor = processor
        self.modality = modality

    def __call__(self, rows):
        media = media_inputs(rows, self.modality, self.processor)
        batch = dict(self.processor(text=[row["caption"] for row in rows], return_tensors="pt", **media))
        batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        return batch


def reference_captions(rows, split):
    """Each row's references: every caption of its scene (rows with the same `label`) in the split, so that a
    correct caption worded another way still matches; without labels, the row's own caption."""
    if "label" not in split.column_names or isinstance(split, IterableDataset):
        return [[row["caption"]] for row in rows]
    by_label = defaultdict(list)
    for label, caption in zip(split["label"], split["caption"]):
        if caption not in by_label[label]:
            by_label[label].append(caption)
    return [by_label[row["label"]] for row in rows]


def generate_captions(model, processor, rows, modality, batch_size, generate_kwargs):
    """Greedy (or beam) captions of `rows`' images or audio, as strings."""

    def collate(chunk):
        return processor(return_tensors="pt", **media_inputs(chunk, modality, processor))

    def step(model, batch):
        sequences = model.generate(**batch, **generate_kwargs)
        return [text.strip() for text in processor.batch_decode(sequences, skip_special_tokens=True)]

    batches = run_in_batches(model, rows, collate, step, batch_size, desc="Captioning")
    return [caption for batch in batches for caption in batch]
