#!/usr/bin/env bash
# The generation examples at full length on one GPU: the judge (run_clip.py with its defaults), a speech-to-text captioner on
# its towers (run_captioning.py --modality audio), text-to-speech with its WER, and a longer text-to-image run. Each
# example's output goes to $OUT/<name>.log, the result folders (weights left out) to $OUT/results.tar.gz.
# Data: $MM_CACHE, default outputs/gpu/cache, written by scripts/pack_builtin_data.py where espeak-ng is installed.
# Packages the GPU machine lacks may come as wheels in .whl/ (installed to /tmp/site when an import fails).
# SCALE=tiny runs the same steps on tiny settings in a few minutes on a CPU: a check of this script.
set -u
cd "$(dirname "$0")/.."
echo "checkout: $(git rev-parse --abbrev-ref HEAD 2>/dev/null) $(git log -1 --format=%h 2>/dev/null); $(date -u)"
if [ -d .whl ] && ! python3 -c "import diffusers, datasets, jiwer, soundfile" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export MM_CACHE=${MM_CACHE:-$PWD/outputs/gpu/cache}
OUT=${OUT:-/tmp/gpu_out}; R=${R:-/tmp/gen_runs}; mkdir -p "$OUT" "$R"
python3 -c "import torch, transformers, diffusers, datasets; print('torch', torch.__version__, 'transformers', transformers.__version__, 'diffusers', diffusers.__version__, 'datasets', datasets.__version__, 'cuda', torch.cuda.is_available())" || exit 1
if [ "${SCALE:-full}" = tiny ]; then
  DATA="--num_train_samples 48 --num_eval_samples 16"
  CLIP="--preset tiny --max_steps 2 --eval_strategy no --save_strategy no $DATA"
  CAP="--max_steps 2 --eval_strategy no --save_strategy no --max_eval_samples 8 $DATA"
  TTS="--max_steps 2 --hidden_size 32 --num_hidden_layers 1 --num_eval_prompts 4 $DATA"
  T2I="--max_steps 2 --num_eval_prompts 8 --num_inference_steps 2 --per_device_train_batch_size 16 $DATA"
else
  CLIP=""; CAP="--num_train_epochs 15"; TTS="--num_train_epochs 16"; T2I="--num_train_epochs 50"
fi
stage() {  # stage NAME SECONDS ARGS...: one example under a time limit, its output in $OUT/NAME.log
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  timeout "$limit" python3 "$@" > "$OUT/$name.log" 2>&1
  echo "$name: exit $? after $((SECONDS - start)) s"
}
stage clip 210 examples/run_clip.py --output_dir "$R/judge" $CLIP
( stage captioner 150 examples/run_captioning.py --modality audio --model_name_or_path "$R/judge" --output_dir "$R/captioner" $CAP
  stage tts 150 examples/run_text_to_speech.py --text_model_name_or_path "$R/judge" --captioner_name_or_path "$R/captioner" --output_dir "$R/tts" $TTS ) &
stage t2i 300 examples/run_text_to_image.py --text_model_name_or_path "$R/judge" --output_dir "$R/t2i" $T2I
wait
python3 - "$R" <<'PY'  # one text tower, three uses: the same text weights in the three folders
import sys
from safetensors.torch import load_file
def tower(path, prefix="text_model."):
    return {key[len(prefix):]: value for key, value in load_file(path).items() if key.startswith(prefix)}
R = sys.argv[1]
clip, speech = tower(f"{R}/judge/model.safetensors"), tower(f"{R}/tts/model.safetensors")
image = tower(f"{R}/t2i/text_encoder/model.safetensors", prefix="")
print(len(clip), "text tower tensors; identical in judge, tts, t2i:", all(clip[k].equal(speech[k]) and clip[k].equal(image[k]) for k in clip))
PY
nvidia-smi --query-gpu=name,memory.used --format=csv 2>/dev/null
for name in clip captioner tts t2i; do echo "=== $name"; grep -v -E "it/s\]|s/it\]|^\s*$" "$OUT/$name.log" | tail -25; done
cd "$R" && tar czf "$OUT/results.tar.gz" --exclude='*.safetensors' --exclude='checkpoint-*' . && ls -la "$OUT"
