"""rnnwatch's streaming side: Kafka in, per-device RNN state, calibrated scores, alerts out."""

__version__ = "0.1.0"
