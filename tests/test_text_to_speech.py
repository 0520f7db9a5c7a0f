"""mm's text-to-speech head: the torch Griffin-Lim and mel spectrogram against librosa, training, save/load, the
text-to-speech pipeline from a saved folder without mm, input checks, and examples/run_text_to_speech.py."""

import io

import librosa
import numpy as np
import soundfile
import pytest
import torch
from safetensors.torch import load_file
from testers import NUM_EVAL, NUM_TRAIN, run_clean, save_tiny_base, tiny_tokenizer

import run_text_to_speech
from configuration_mm import MMConfig, MMSpeechConfig
from modeling_mm import MMForConditionalGeneration, MMForTextToSpeech
from modeling_mm.modeling_mm_griffin_lim import MMMelSpectrogram, griffin_lim
from training_mm.text_to_speech import TextToSpeechCollator, mel_cepstral_distortion

SPEECH = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, max_frames=96)


def tiny_model(seed=0):
    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    config = MMConfig.from_preset("tiny", text_config={"vocab_size": len(tokenizer)}, speech_config=SPEECH)
    return MMForTextToSpeech(config).eval(), tokenizer


def chirp(seconds=0.5, rate=16000):
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * (200 + 600 * t) * t)).astype(np.float32)


def test_griffin_lim_matches_librosa():
    n_fft, hop = 512, 128
    magnitudes = np.abs(librosa.stft(chirp(), n_fft=n_fft, hop_length=hop, pad_mode="constant"))
    expected = librosa.griffinlim(magnitudes, n_iter=8, hop_length=hop, n_fft=n_fft, init=None, momentum=0.99)
    ours = griffin_lim(torch.from_numpy(magnitudes)[None], n_fft, hop, torch.hann_window(n_fft), num_iterations=8)[0]
    assert ours.shape == expected.shape
    np.testing.assert_allclose(ours.numpy(), expected, atol=2e-3 * np.abs(expected).max())


def test_mel_spectrogram_matches_librosa():
    config = MMSpeechConfig(n_fft=512, hop_length=128, num_mel_bins=40)
    ours = MMMelSpectrogram(config)(torch.from_numpy(chirp())[None])[0].numpy()
    mel = librosa.feature.melspectrogram(
        y=chirp(), sr=16000, n_fft=512, hop_length=128, n_mels=40, power=1.0, pad_mode="constant"
    )
    np.testing.assert_allclose(ours, np.log(np.maximum(mel, 1e-5)).T, rtol=1e-3, atol=1e-3)


def training_batch(model, tokenizer):
    rows = [
        {"caption": "a red circle", "audio": chirp(0.4)},
        {"caption": "a photo of a blue star", "audio": chirp(0.7)},
    ]
    for row in rows:  # the collator reads WAV bytes, as the built-in data stores them
        buffer = io.BytesIO()
        soundfile.write(buffer, row["audio"], 16000, format="WAV")
        row["audio"] = {"bytes": buffer.getvalue(), "path": None}
    return TextToSpeechCollator(tokenizer, model.mel_spectrogram, model.config.speech_config.max_frames)(rows)


def test_training_lowers_the_loss_and_durations_cover_the_clip():
    model, tokenizer = tiny_model()
    batch = training_batch(model, tokenizer)
    assert (batch["durations"].sum(dim=1) == batch["labels_mask"].sum(dim=1)).all()
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(10):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    with pytest.raises(ValueError, match="needs `durations`"):
        model(**{k: v for k, v in batch.items() if k != "durations"})


def test_save_load_identical_and_pipeline_speaks_without_mm(tmp_path):
    model, tokenizer = tiny_model()
    tokens = tokenizer(["a red circle"], return_tensors="pt")
    expected = model.generate_speech(**tokens)
    assert expected.waveform.shape[1] == expected.waveform_lengths[0]
    np.testing.assert_array_equal(model.generate_speech(**tokens).waveform, expected.waveform)  # deterministic
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert not list(tmp_path.glob("*.bin"))
    state = load_file(tmp_path / "model.safetensors")
    assert "duration_predictor.proj.weight" in state and "text_model.embeddings.token_embedding.weight" in state

    loaded = MMForTextToSpeech.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(loaded.generate_speech(**tokens).waveform, expected.waveform)

    code = f"""
import numpy as np
from transformers import pipeline
speaker = pipeline("text-to-speech", model={str(tmp_path)!r}, trust_remote_code=True)
out = speaker("a red circle")
np.save({str(tmp_path / "clean.npy")!r}, out["audio"])
print(type(speaker).__name__, out["sampling_rate"])
for bad in ("", "red " * 60):
    try:
        speaker(bad)
    except ValueError as error:
        print("refused:", "non-empty" in str(error) or "tokens long" in str(error))
"""
    lines = run_clean(code, tmp_path).splitlines()
    assert lines == ["MMTextToSpeechPipeline 16000", "refused: True", "refused: True"]
    np.testing.assert_allclose(np.load(tmp_path / "clean.npy"), expected.waveform[0].numpy(), atol=1e-5)


def test_too_long_speech_is_refused():
    model, tokenizer = tiny_model()
    tokens = tokenizer(["a red circle"], return_tensors="pt")
    with pytest.raises(ValueError, match="max_frames"):
        model(**tokens, durations=torch.full(tokens["input_ids"].shape, 50))


def test_mel_cepstral_distortion_is_zero_for_the_same_clip_and_grows_with_noise():
    mel = MMMelSpectrogram(MMSpeechConfig())
    clean = mel(torch.from_numpy(chirp())[None])[0].numpy()
    noisy = mel(torch.from_numpy(chirp() + np.random.default_rng(0).normal(0, 0.2, 8000).astype(np.float32))[None])[0]
    assert mel_cepstral_distortion(clean, clean) == 0
    assert mel_cepstral_distortion(noisy.numpy(), clean) > 1


def test_example_trains_measures_and_writes_samples(builtin_data, tmp_path, capsys):
    base = save_tiny_base(tmp_path / "base")
    captioner = save_tiny_base(tmp_path / "captioner", MMForConditionalGeneration)  # untrained: only the WER path
    output_dir = tmp_path / "out"
    metrics = run_text_to_speech.main(
        ["--model_name_or_path", str(base), "--num_train_samples", str(NUM_TRAIN),
         "--num_eval_samples", str(NUM_EVAL), "--max_steps", "3", "--per_device_train_batch_size", "16",
         "--hidden_size", "32", "--num_hidden_layers", "1", "--num_eval_prompts", "4",
         "--captioner_name_or_path", str(captioner), "--output_dir", str(output_dir)]
    )  # fmt: skip
    assert {"generated mcd", "noise mcd", "generated recall@1 audio->text", "real recall@1 audio->text"} <= set(metrics)
    # WER of the same captioner on the generated clips, its ceiling (the espeak-ng clips) and its floor.
    wers = [metrics[f"{name} wer"] for name in ("generated", "real", "noise", "silence")]
    assert all(np.isfinite(wer) and wer >= 0 for wer in wers)
    report = capsys.readouterr().out
    assert "MCD (dB)" in report and "WER" in report and "silence" in report
    assert (output_dir / "samples" / "00-generated.wav").is_file()
    assert (output_dir / "modeling_mm_speech.py").is_file() and (output_dir / "tokenizer.json").is_file()


def test_the_default_captioner_is_trained_on_the_judges_towers_only_when_missing(tmp_path, monkeypatch):
    from training_mm import default_checkpoint
    from training_mm.script_arguments import DataArguments

    runs = []
    monkeypatch.setattr(default_checkpoint, "_run_example", lambda name, argv: runs.append((name, argv)))
    monkeypatch.chdir(tmp_path)
    data_args = DataArguments(num_train_samples=48, num_eval_samples=16)
    default = default_checkpoint.DEFAULT_CAPTIONER
    assert default_checkpoint.ensure_captioner(default, "judge", data_args) == default
    assert len(runs) == 1 and runs[0][0] == "run_captioning"
    argv = runs[0][1]
    assert argv[argv.index("--modality") + 1] == "audio" and argv[argv.index("--model_name_or_path") + 1] == "judge"
    assert argv[argv.index("--output_dir") + 1] == default and argv[argv.index("--num_train_samples") + 1] == "48"
    (tmp_path / default).mkdir(parents=True)  # there now: used as it is
    assert default_checkpoint.ensure_captioner(default, "judge", data_args) == default and len(runs) == 1
    # Any other path is the user's: never trained, even when missing (loading it then names it).
    assert default_checkpoint.ensure_captioner("elsewhere", "judge", data_args) == "elsewhere" and len(runs) == 1


def test_word_error_rate_counts_word_edits_over_all_reference_words():
    captions = ["a red circle on the left", "two blue stars"]
    # One substitution in the first caption; the second transcript is empty (its three words lost): 4 edits, 9 words.
    assert run_text_to_speech.word_error_rate(captions, ["a red square on the left", ""]) == pytest.approx(4 / 9)
    assert run_text_to_speech.word_error_rate(captions, captions) == 0


def test_a_contrastive_checkpoint_gives_its_text_tower_and_nothing_else(tmp_path):
    from modeling_mm import MMModel

    base = save_tiny_base(tmp_path / "base")
    config = MMConfig.from_pretrained(base)
    config.speech_config = MMSpeechConfig(**SPEECH)
    model = MMForTextToSpeech.from_pretrained(base, config=config)
    contrastive = MMModel.from_pretrained(base)
    for name, weight in contrastive.text_model.state_dict().items():
        torch.testing.assert_close(model.text_model.state_dict()[name], weight)
    # The head's input projection is its own (the contrastive `text_projection` has the same shape here).
    assert not torch.equal(model.speech_projection.weight, contrastive.text_projection.weight)
