"""Training helpers for mm: built-in data, user data, the meta-controller callback, metrics, Hub export.

Import the submodules directly (e.g. `from training_mm.hub import write_model_card`).
"""
