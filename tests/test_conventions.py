"""The transformers conventions a user relies on without thinking, each pinned as transformers' CLIP/SigLIP (or its
Trainer, generate, push_to_hub and examples) behave: tuples with return_dict=False, resizing the vocabulary, Trainer's
evaluation loss, attention weights under sdpa, the prompt in generate's output, Auto classes without remote code, and
the example scripts' argument files."""

import json
import logging

import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image
from transformers import (
    AutoModel,
    AutoModelForImageTextToText,
    AutoModelForSpeechSeq2Seq,
    AutoModelForZeroShotImageClassification,
    Trainer,
    TrainingArguments,
)
from transformers.testing_utils import CaptureLogger

from configuration_mm import MMConfig
from modeling_mm import MMAudioModel, MMForConditionalGeneration, MMModel, MMTextModel, MMVisionModel
from modeling_mm.modeling_mm_decoder import MMTextDecoder
from testers import run_clean, tiny_processor
from training_mm.collators import ContrastiveCollator

import run_captioning
import run_clip
import run_lora


def tiny(model_class=MMModel, **overrides):
    torch.manual_seed(0)
    return model_class(MMConfig.from_preset("tiny", **overrides)).eval()


def batch(size=2):
    generator = torch.Generator().manual_seed(0)
    return dict(
        input_ids=torch.randint(4, 500, (size, 6), generator=generator),
        attention_mask=torch.ones(size, 6, dtype=torch.long),
        pixel_values=torch.randn(size, 3, 32, 32, generator=generator),
        input_features=torch.randn(size, 32, 50, generator=generator),
    )


# ------------------------------------------------------------------------------------------------ return_dict


def test_return_dict_false_gives_tuples_in_every_class():
    inputs = batch()
    model = tiny()
    with torch.no_grad():
        as_dict = model(**inputs)
        as_tuple = model(**inputs, return_dict=False)
        model.config.return_dict = False
        from_config = model(**inputs)
    for out in (as_tuple, from_config):
        assert isinstance(out, tuple)
        torch.testing.assert_close(out[0], as_dict.logits_per_image)  # the non-None fields, in order (no loss here)
    features = model.get_image_features(inputs["pixel_values"], return_dict=False)
    assert isinstance(features, tuple) and features[1].shape == (2, 32)  # (last_hidden_state, pooler_output)

    towers = {
        MMTextModel: {"input_ids": inputs["input_ids"]},
        MMVisionModel: {"pixel_values": inputs["pixel_values"]},
        MMAudioModel: {"input_features": inputs["input_features"]},
        MMTextDecoder: {"input_ids": inputs["input_ids"]},
    }
    configs = MMConfig.from_preset("tiny")
    for tower_class, tower_inputs in towers.items():
        config = getattr(configs, tower_class.config_class.base_config_key)
        out = tower_class(config).eval()(**tower_inputs, return_dict=False)
        assert isinstance(out, tuple) and out[0].shape[0] == 2, tower_class.__name__

    captioner = tiny(MMForConditionalGeneration)
    labels = inputs["input_ids"]
    with torch.no_grad():
        out = captioner(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"], labels=labels, return_dict=False)
    assert isinstance(out, tuple) and out[0].ndim == 0 and out[1].shape == (2, 6, 512)  # (loss, logits, ...)


# ------------------------------------------------------------------------------------------------ vocabulary


@pytest.mark.parametrize("model_class", [MMModel, MMForConditionalGeneration])
def test_resized_vocabulary_saves_and_reloads(model_class, tmp_path):
    model = tiny(model_class)
    model.resize_token_embeddings(600)
    assert model.config.text_config.vocab_size == model.config.decoder_config.vocab_size == 600
    model.save_pretrained(tmp_path)
    reloaded = model_class.from_pretrained(tmp_path).eval()
    text_tower = reloaded.mm.text_model if model_class is MMForConditionalGeneration else reloaded.text_model
    assert text_tower.get_input_embeddings().num_embeddings == 600
    new_token = torch.tensor([[1, 599, 2]])  # a token only the resized vocabulary has
    with torch.no_grad():
        before = model.get_text_features(new_token) if model_class is MMModel else model(input_ids=new_token).logits
        after = reloaded.get_text_features(new_token) if model_class is MMModel else reloaded(input_ids=new_token).logits
    if model_class is MMModel:
        before, after = before.pooler_output, after.pooler_output
    else:
        assert after.shape[-1] == 600 and reloaded.lm_head.weight is reloaded.decoder.embed_tokens.weight
    torch.testing.assert_close(after, before)


# ------------------------------------------------------------------------------------------------ Trainer


def test_plain_trainer_reports_the_contrastive_eval_loss(tmp_path):
    """No `label_names=[]`: Trainer finds no label argument in MMModel.forward (group ids are `group_ids`), so the
    collator's `return_loss=True` gives an evaluation loss, as with CLIPModel."""
    processor = tiny_processor()
    model = tiny(text_config={"vocab_size": len(processor.tokenizer)})
    colours = ["red", "green", "blue", "yellow"] * 2
    rows = [{"caption": f"a {colour} square", "image": Image.new("RGB", (32, 32), colour), "label": colour}
            for colour in colours]  # fmt: skip
    # As for CLIPModel, the collator reads columns the model does not take (caption, image, label).
    args = TrainingArguments(str(tmp_path), per_device_eval_batch_size=4, report_to=[], remove_unused_columns=False)
    trainer = Trainer(model=model, args=args, eval_dataset=rows, data_collator=ContrastiveCollator(processor, ("image",)))
    assert trainer.label_names == []
    metrics = trainer.evaluate()
    assert metrics["eval_loss"] > 0


def test_labels_keyword_is_refused_with_the_new_name():
    with pytest.raises(TypeError, match="group_ids"):
        tiny()(**batch(), labels=torch.arange(2), return_loss=True)


# ------------------------------------------------------------------------------------------------ attention weights


def test_output_attentions_under_sdpa_warns_as_transformers_does():
    """transformers' sdpa back-end warns that it returns no weights (it does not fall back); eager returns them."""
    inputs = batch()
    sdpa = tiny(attn_implementation="sdpa")
    logger = logging.getLogger("transformers.integrations.sdpa_attention")
    logging.Logger.warning_once.cache_clear()  # the warning is logged once per process
    with CaptureLogger(logger) as captured, torch.no_grad():
        out = sdpa.text_model(input_ids=inputs["input_ids"], output_attentions=True)
    assert "does not support `output_attentions=True`" in captured.out
    assert all(weights is None for weights in out.attentions)

    eager = tiny(attn_implementation="eager")
    with torch.no_grad():
        weights = eager.text_model(input_ids=inputs["input_ids"], output_attentions=True).attentions
    assert len(weights) == 2 and weights[0].shape == (2, 4, 6, 6)


# ------------------------------------------------------------------------------------------------ generate


def test_generate_returns_the_prompt_as_passed_then_the_new_tokens():
    model = tiny(MMForConditionalGeneration)
    processor = tiny_processor()
    prompt = processor.tokenizer(["a photo of", "a red"], padding=True, return_tensors="pt")  # right-padded, with </s>
    pixel_values = batch()["pixel_values"]
    out = model.generate(**prompt, pixel_values=pixel_values, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    prompt_len = prompt["input_ids"].shape[1]
    assert torch.equal(out[:, :prompt_len], prompt["input_ids"]) and out.shape[1] == prompt_len + 4
    # The continuation is what the model writes after each prompt on its own.
    for row in range(2):
        length = int(prompt["attention_mask"][row].sum())
        alone = model.generate(
            input_ids=prompt["input_ids"][row : row + 1, :length],
            pixel_values=pixel_values[row : row + 1],
            max_new_tokens=4,
            min_new_tokens=4,
            do_sample=False,
        )
        assert torch.equal(alone[:, length:], out[row : row + 1, prompt_len:])

    beams = model.generate(**prompt, pixel_values=pixel_values, max_new_tokens=3, num_beams=2, num_return_sequences=2,
                           return_dict_in_generate=True)  # fmt: skip
    assert torch.equal(beams.sequences[:, :prompt_len], prompt["input_ids"].repeat_interleave(2, dim=0))


# ------------------------------------------------------------------------------------------------ Auto classes


def test_saved_folder_loads_with_auto_classes_without_remote_code(tmp_path):
    tiny().save_pretrained(tmp_path / "contrastive")
    tiny(MMForConditionalGeneration).save_pretrained(tmp_path / "captioner")
    assert type(AutoModel.from_pretrained(tmp_path / "contrastive")) is MMModel
    assert type(AutoModelForZeroShotImageClassification.from_pretrained(tmp_path / "contrastive")) is MMModel
    for auto_class in (AutoModelForImageTextToText, AutoModelForSpeechSeq2Seq):
        assert type(auto_class.from_pretrained(tmp_path / "captioner")) is MMForConditionalGeneration
    # Where mm is installed, transformers prefers explicitly registered classes to a checkpoint's code, also with
    # trust_remote_code=True (auto_factory's `explicit_local_code`); where it is not, the next test loads remote code.
    assert type(AutoModel.from_pretrained(tmp_path / "contrastive", trust_remote_code=True)) is MMModel


def test_auto_classes_need_remote_code_where_mm_is_not_installed(tmp_path):
    tiny().save_pretrained(tmp_path / "model")
    code = f"""
from transformers import AutoModel
model = AutoModel.from_pretrained({str(tmp_path / "model")!r}, trust_remote_code=True)
print(type(model).__module__.split(".")[0], type(model).__name__)
"""
    assert "transformers_modules MMModel" in run_clean(code, cwd=tmp_path)


# ------------------------------------------------------------------------------------------------ model cards


@pytest.mark.parametrize(
    "task, must, must_not",
    [
        ("automatic-speech-recognition", ["AutoModelForSpeechSeq2Seq", 'pipeline("automatic-speech-recognition"',
                                          "run_captioning.py", "--modality audio"], ["zero-shot", "logits_per"]),
        ("image-to-text", ["AutoModelForImageTextToText", 'pipeline("image-to-text"'], ["zero-shot", "--modality"]),
        ("zero-shot-image-classification", ["logits_per_image", "run_clip.py"], ["generate(", "--task captioning"]),
    ],
)  # fmt: skip
def test_pushed_card_usage_matches_the_task(task, must, must_not, tmp_path):
    from training_mm.hub import write_pushed_model_card

    model_class = MMModel if task.startswith("zero-shot") else MMForConditionalGeneration
    card = write_pushed_model_card(tmp_path, tiny(model_class), "mm-tester/mm-tiny", task)
    assert card.data.pipeline_tag == task
    for text in must:
        assert text in card.text, text
    for text in must_not:
        assert text not in card.text, text
    assert "--do_train" not in card.text and "--do_eval" not in card.text  # no script reads them
    assert "None" not in card.text  # the run's data and metrics are unknown to push_to_hub, and the card says so


def test_model_push_to_hub_uploads_the_mm_card(hub_server):
    tiny(MMForConditionalGeneration).push_to_hub("mm-tester/mm-asr", pipeline_tag="automatic-speech-recognition")
    card = ModelCard(hub_server.files("mm-tester/mm-asr")["README.md"].decode())
    assert card.data.pipeline_tag == "automatic-speech-recognition" and "mm" in card.data.tags
    assert "MMForConditionalGeneration" in card.text and "AutoModelForSpeechSeq2Seq" in card.text


# ------------------------------------------------------------------------------------------------ example arguments


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
@pytest.mark.parametrize("script", [run_clip, run_captioning, run_lora])
def test_examples_read_a_config_file_and_flags_override_it(script, suffix, tmp_path):
    settings = {"learning_rate": 0.01, "max_steps": 7, "output_dir": str(tmp_path / "out"), "report_to": ["none"],
                "model_name_or_path": str(tmp_path / "base")}  # fmt: skip
    path = tmp_path / f"run{suffix}"
    path.write_text(json.dumps(settings))  # JSON is YAML too
    model_args, _, training_args = script.parse_args([str(path), "--learning_rate", "0.002"])
    assert training_args.learning_rate == 0.002  # the flag wins
    assert training_args.max_steps == 7 and training_args.output_dir == str(tmp_path / "out")
    assert model_args.model_name_or_path == str(tmp_path / "base")


def test_config_file_with_an_unknown_argument_fails_naming_it(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("learning_speed: 0.01\n")
    with pytest.raises(ValueError, match="learning_speed"):
        run_clip.parse_args([str(path)])
