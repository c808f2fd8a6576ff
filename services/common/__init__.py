"""What several services share: NATS connection, subjects, logging, metrics, settings."""
