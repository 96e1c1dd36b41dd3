"""storyboard: a character LoRA and consistent storyboards from one-line stories, as a DVC pipeline."""

__version__ = "0.1.0"

TINY_NOTICE = (
    "tiny profile: random-weight models built offline; these outputs check the pipeline's plumbing, never image quality"
)
