"""User errors: problems with what the user asked for, reported in one line (exit code 2)."""


class UserError(Exception):
    """Bad input from the user (a path, an argument, a file's contents); never a bug."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
