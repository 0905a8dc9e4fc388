"""The project's user-facing error type (its own module so every inner module can raise it)."""


class ConfigError(ValueError):
    """A config file, key or value is wrong. The message names the key (and file)."""
