"""The train stage: the SDXL LoRA, its saved steps (models/steps) and resumable checkpoints."""
