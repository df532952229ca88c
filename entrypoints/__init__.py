"""Drivers of chater-gpt: the container, the Kafka worker, the command line."""
