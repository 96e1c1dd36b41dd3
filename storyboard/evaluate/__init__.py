"""Evaluation: does the character's face stay the same across frames."""
