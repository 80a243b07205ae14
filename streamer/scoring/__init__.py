"""The scoring core: readings in, calibrated scores and alert events out. Importable without Kafka."""
