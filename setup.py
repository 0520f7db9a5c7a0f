from setuptools import setup

# torch is required but deliberately left open at the bottom of its range: on a machine without torch,
# install the build for your hardware first (CPU: `pip install torch==2.13.0`, which scripts/install.sh
# does), and this requirement is then already satisfied instead of pulling a multi-GB CUDA build.
install_requires = [
    "torch>=2.4",
    "transformers>=5.17,<6",
    "accelerate>=1.0",
    "datasets>=3.0",
    "evaluate>=0.4",
    "peft>=0.13",
    "safetensors>=0.4",
    "huggingface-hub>=1.0",
    "tokenizers>=0.21",
    "pillow>=10",
    "soundfile>=0.12",
    "sacrebleu>=2.4",
    "jiwer>=3.0",
    "tensorboard>=2.15",
    "diffusers>=0.30",
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
    packages=["configuration_mm", "modeling_mm", "processing_mm", "training_mm"],
    # The model card template, for training_mm.hub.write_model_card outside a checkout.
    data_files=[("share/mm", ["model_card.md"])],
    install_requires=install_requires,
    # setuptools: tests build a wheel (without build isolation) to check what a regular install ships.
    extras_require={"dev": ["pytest>=8", "pytest-timeout", "setuptools>=70.1"]},
    license="Apache-2.0",
)
