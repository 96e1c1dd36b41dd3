"""The one error of training."""

from storyboard.errors import StoryboardError


class TrainError(StoryboardError):
    """Training can't start or go on; the message says which knob or file to fix."""
