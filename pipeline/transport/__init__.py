"""Event-log transports: one interface (base.EventLog), SQLite and Kafka implementations."""
