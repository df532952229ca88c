"""What each family of chat models takes in a Chat Completions request, and the
model OpenAI serves for a name the platform uses.

OpenAI's API reference: `max_tokens` is deprecated in favour of
`max_completion_tokens` (which counts the reasoning tokens too) and is refused by
the reasoning models (400 `unsupported_parameter`); the reasoning models take only
the default temperature, 1 (any other value is 400 `unsupported_value`). So:

- reasoning (o1, o1-mini, o3, o3-mini, o4-mini, ... and the gpt-5 family, gpt-5.x
  included): `max_completion_tokens`, and no `temperature` at all (the caller's
  temperature cannot be honoured; leaving it out is always accepted);
- chat (gpt-4o, gpt-4o-mini, chatgpt-4o-latest, gpt-4.1, gpt-4.5, gpt-4-turbo,
  gpt-4, gpt-3.5-turbo, and the gpt-5 chat variants such as gpt-5-chat-latest):
  `max_completion_tokens` (the documented parameter; `max_tokens` still works but
  is deprecated) and `temperature`;
- other names (a model behind an OpenAI-compatible server at OPENAI_BASE_URL):
  `max_tokens` and `temperature`, the parameters every compatible server knows
  (some do not know `max_completion_tokens`).

A name is matched by its base model: a fine-tune (`ft:gpt-4o-mini-2024-07-18:org::id`)
or a name with a provider (`azure/o4-mini`) as the model it is built on, and a dated
snapshot (`o4-mini-2025-04-16`, `gpt-3.5-turbo-0125`) as its model, as
domain.pricing and domain.model_limits match snapshots.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# The names OpenAI does not serve, and the model that answers for them. The
# platform writes gpt-4o-latest for its vision model; chatgpt-4o-latest (the
# nearest served name) was shut down in February 2026, so gpt-4o answers.
SERVED_MODELS: dict[str, str] = {"gpt-4o-latest": "gpt-4o"}

_DATED = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{4})$")
_REASONING = re.compile(r"^(?:o\d+(?:-|$)|gpt-5)")
_CHAT = re.compile(r"^(?:gpt-5[^-]*-chat|gpt-4|gpt-3\.5-turbo|chatgpt-4o)")


@dataclass(frozen=True)
class ModelFamily:
    """How a family's requests limit the reply, and whether they carry a temperature."""

    name: str
    token_limit: str  # "max_completion_tokens" or "max_tokens"
    takes_temperature: bool

    def parameters(self, max_tokens: int, temperature: float) -> dict[str, int | float]:
        """The reply's limit and sampling parameters of a request to a model of this family."""
        parameters: dict[str, int | float] = {self.token_limit: max_tokens}
        if self.takes_temperature:
            parameters["temperature"] = temperature
        return parameters


REASONING = ModelFamily("reasoning", "max_completion_tokens", takes_temperature=False)
CHAT = ModelFamily("chat", "max_completion_tokens", takes_temperature=True)
OTHER = ModelFamily("other", "max_tokens", takes_temperature=True)


def base_model(model: str) -> str:
    """The model a name is built on: without provider, fine-tune wrapping and snapshot date."""
    name = model.strip().lower().rsplit("/", 1)[-1]
    if name.startswith("ft:"):
        name = name.removeprefix("ft:").split(":", 1)[0]
    return _DATED.sub("", name)


def family_of(model: str) -> ModelFamily:
    """The family of a model name (see the module's docstring); OTHER when unknown."""
    name = base_model(served_model(model))
    if _CHAT.match(name):
        return CHAT
    if _REASONING.match(name):
        return REASONING
    return OTHER


def served_model(model: str) -> str:
    """The model id to send to the provider for a name (most names are their own)."""
    return SERVED_MODELS.get(model, model)

