"""Errors that mean "the user gave bad input". The CLI turns them into one line and exit code 2."""


class UserError(Exception):
    """Bad input from the user: a wrong name, path, option or file. Exit code 2 in the CLI."""


class DatasetError(UserError):
    """A dataset is missing, malformed or inconsistent. The message names the file and the key."""


class ConfigError(UserError):
    """An unknown algorithm, a bad hyperparameter override or a malformed suite/preset file."""
