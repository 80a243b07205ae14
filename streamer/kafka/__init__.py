"""Kafka edges: the embedded broker, client configuration, admin, consumer and publisher."""
