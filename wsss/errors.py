"""The configuration error, shared by the config and the method registry below it."""


class ConfigError(ValueError):
    """A configuration key or value is invalid; the message names the key and the problem."""
