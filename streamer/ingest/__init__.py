"""Decode and validate raw Kafka records into ReadingBatch; route the rest to the dead-letter topic."""
