"""One root exception for the service; each subsystem raises a subclass whose message says what to do."""


class RnnwatchError(Exception):
    """Root of every error rnnwatch raises on purpose."""


class ConfigError(RnnwatchError):
    """A setting is missing or invalid; the message names the flag / environment variable to fix."""


class ModelError(RnnwatchError):
    """A model artifact cannot be loaded or does not fit the stream."""


class BrokerError(RnnwatchError):
    """The Kafka broker cannot be reached or refused an operation."""


class StateError(RnnwatchError):
    """A device state record cannot be stored or restored."""
