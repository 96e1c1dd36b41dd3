"""The one base class for errors a user can fix: stages print their message and exit 2, without a traceback."""


class StoryboardError(RuntimeError):
    """Bad input, missing file or unusable setting; the message names it and says what to do."""
