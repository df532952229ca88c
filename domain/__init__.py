"""The pure core of chater-gpt: event-sourced aggregates, no I/O."""
