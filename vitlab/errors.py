"""One exception type for user-facing mistakes: the CLI prints its message as a single line."""


class VitlabError(ValueError):
    """Bad input from the user (unknown name, missing file, bad config). The message says what to do."""
