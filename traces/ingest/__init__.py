"""OTLP trace ingest: decode (protobuf/JSON/gzip), map GenAI spans, write through the services."""
