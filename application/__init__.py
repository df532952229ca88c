"""Use cases of chater-gpt and the ports they need."""
