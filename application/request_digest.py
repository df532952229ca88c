"""What identifies a request's content: a digest recorded with its request id, so
that a request id seen again with other content is told apart from a redelivery."""

from __future__ import annotations

import hashlib
import json

from application.contract import ChatRequest

# The digest names its form: a later change of what is hashed gets a new one,
# and digests of different forms are never compared (domain.conversation).
DIGEST_FORM = "request-v1"


def request_digest(request: ChatRequest) -> str:
    """SHA-256 over a canonical JSON of what the request asks: the message, its
    images (by digest), the caller's context, the system prompt, the model as
    asked, max_tokens, temperature and batch. Not its priority or deadline (how
    it is served, not what it asks), nor its user and thread (which
    conversation it is in already says)."""
    asked = {
        "message": request.message,
        "images": [image.digest for image in request.images],
        "context": request.context,
        "system_prompt": request.system_prompt,
        "model": request.model,
        "max_tokens": request.max_tokens,
        "temperature": None if request.temperature is None else float(request.temperature),
        "batch": request.batch,
    }
    canonical = json.dumps(asked, sort_keys=True, separators=(",", ":"))  # ASCII: any text
    return f"{DIGEST_FORM}:{hashlib.sha256(canonical.encode('ascii')).hexdigest()}"
