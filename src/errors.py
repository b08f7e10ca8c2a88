"""The one-line refusal of a bad configuration (exit 2), shared by the validator and the modules it asks."""


class ConfigError(ValueError):
    pass
