"""Local fake of the OpenAI Chat Completions API, for tests.

Run it standalone::

    python -m tests.support.fake_openai --port 8099 --latency 0.2

or from tests through :class:`FakeOpenAIServer`, which starts it as a
subprocess on a free loopback port and drives it over HTTP.

``POST /v1/chat/completions`` records every request body and answers in
OpenAI's wire format.  By default the reply echoes what the model saw::

    echo: <last user text> | seen: <N> messages[ | images: <K>]

Tests can queue *steps* that change the next answers (see :func:`_pick_step`):

* ``{"reply": "text", "finish_reason": "stop"}`` - answer with this text
* ``{"status": 429, "headers": {"retry-after": "1"}, "body": {...}}`` - HTTP
  error; ``body`` defaults to an OpenAI-shaped ``{"error": {...}}``
* ``{"delay": seconds}`` - wait first (combinable with the others)
* ``{"malformed": true}`` - HTTP 200 with a body that is not JSON
* ``{"disconnect": true}`` - close the connection without answering
* ``"match": "substring"`` on any step - only for a request whose last user
  message contains the substring

Streaming (``stream=True``) is not supported.

Control endpoints (JSON): ``POST /_control/script`` (list of steps, appended),
``GET /_control/requests``, ``POST /_control/reset``,
``POST /_control/latency`` ``{"seconds": x}``, ``GET /_control/health``.

The server half imports only aiohttp and the standard library; the client half
(:class:`FakeOpenAIServer`) only the standard library.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import http.client
import itertools
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aiohttp import web

_HOST = "127.0.0.1"
_READY_RE = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")

# ---------------------------------------------------------------------------
# Server
# ---------------------------------------------------------------------------

_DEFAULT_ERRORS: dict[int, tuple[str, str, str | None]] = {
    400: ("Bad request", "invalid_request_error", None),
    401: ("Incorrect API key provided", "invalid_request_error", "invalid_api_key"),
    403: ("Permission denied", "invalid_request_error", None),
    404: ("The model does not exist", "invalid_request_error", "model_not_found"),
    429: ("Rate limit reached for requests", "requests", "rate_limit_exceeded"),
    500: ("The server had an error while processing your request", "server_error", None),
    503: ("The engine is currently overloaded", "server_error", None),
}


def _error_body(status: int) -> dict[str, Any]:
    """Return an error payload in OpenAI's shape for an HTTP status."""
    message, kind, code = _DEFAULT_ERRORS.get(status, (f"Fake error {status}", "server_error", None))
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _parts(content: Any) -> list[dict[str, Any]]:
    """Normalise message content (a string or a list of parts) to a list of parts."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list):
        return [p for p in content if isinstance(p, dict)]
    return [{"type": "text", "text": str(content)}]


def _text(message: dict[str, Any]) -> str:
    """Return the text of a message, text parts joined by a space."""
    return " ".join(p.get("text", "") for p in _parts(message.get("content")) if p.get("type") == "text")


def _image_count(message: dict[str, Any]) -> int:
    """Return how many image parts a message carries."""
    return sum(1 for p in _parts(message.get("content")) if p.get("type") == "image_url")


def _last_user_message(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """Return the last message with role ``user`` ({} if there is none)."""
    for message in reversed(messages):
        if message.get("role") == "user":
            return message
    return {}


def default_reply(messages: list[dict[str, Any]]) -> str:
    """The deterministic echo reply used when no scripted step applies."""
    last = _last_user_message(messages)
    reply = f"echo: {_text(last)} | seen: {len(messages)} messages"
    images = _image_count(last)
    if images:
        reply += f" | images: {images}"
    return reply


def prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """Deterministic prompt token count: words + 3 per message + 85 per image."""
    return sum(len(_text(m).split()) + 3 + 85 * _image_count(m) for m in messages)


class FakeOpenAIState:
    """Mutable state of one fake server: script queue, recorded requests, latency."""

    def __init__(self, latency: float = 0.0) -> None:
        """Start with an empty script, no requests and the given latency."""
        self.initial_latency = latency
        self.latency = latency
        self.steps: list[dict[str, Any]] = []
        self.requests: list[Any] = []
        # (last user text, received at, answered at) per completion, epoch seconds:
        # the load test subtracts model time from end-to-end latency with these.
        self.timings: list[tuple[str, float, float]] = []
        self.ids = itertools.count(1)

    def reset(self) -> None:
        """Forget steps and requests; latency back to its start value."""
        self.steps.clear()
        self.requests.clear()
        self.timings.clear()
        self.latency = self.initial_latency

    def pick_step(self, last_user_text: str) -> dict[str, Any] | None:
        """Pop the step for a request whose last user message is ``last_user_text``.

        A step whose ``match`` occurs in the text wins, wherever it is queued
        (so concurrent tests can target their own requests); otherwise the
        first step without ``match`` applies.  None when neither exists.
        """
        for i, step in enumerate(self.steps):
            if "match" in step and str(step["match"]) in last_user_text:
                return self.steps.pop(i)
        for i, step in enumerate(self.steps):
            if "match" not in step:
                return self.steps.pop(i)
        return None


def build_app(state: FakeOpenAIState) -> "web.Application":
    """Return the aiohttp application serving the fake API for ``state``."""
    from aiohttp import web

    async def chat_completions(request: web.Request) -> web.StreamResponse:
        received_at = time.time()
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            state.requests.append(body)
            return web.json_response(
                {"error": {"message": "body must be a JSON object with 'messages'",
                           "type": "invalid_request_error", "param": "messages", "code": None}},
                status=400,
            )
        state.requests.append(body)
        messages = [m for m in body["messages"] if isinstance(m, dict)]
        step = state.pick_step(_text(_last_user_message(messages))) or {}

        # Global latency plus any per-step delay; asyncio.sleep keeps thousands of waits cheap.
        delay = state.latency + float(step.get("delay", 0))
        if delay > 0:
            await asyncio.sleep(delay)

        if step.get("disconnect"):
            # Drop the TCP connection without writing a response.
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError()
        if "status" in step:
            status = int(step["status"])
            return web.json_response(step.get("body", _error_body(status)), status=status,
                                 headers=step.get("headers"))
        if step.get("malformed"):
            return web.Response(status=200, text='{"id": "chatcmpl-broken", "choices": [',
                                content_type="application/json")

        reply = step["reply"] if "reply" in step else default_reply(messages)
        prompt = prompt_tokens(messages)
        completion = len(str(reply).split())
        payload = {
            "id": f"chatcmpl-fake-{next(state.ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "fake-model"),
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": reply, "refusal": None},
                "logprobs": None,
                "finish_reason": step.get("finish_reason", "stop"),
            }],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            },
            "system_fingerprint": "fake",
        }
        state.timings.append((_text(_last_user_message(messages)), received_at, time.time()))
        return web.json_response(payload, headers={
            "x-ratelimit-remaining-requests": "9999",
            "x-ratelimit-remaining-tokens": "999999",
            **step.get("headers", {}),
        })

    async def control_script(request: web.Request) -> web.Response:
        steps = await request.json()
        if isinstance(steps, dict):
            steps = [steps]
        if not isinstance(steps, list) or not all(isinstance(s, dict) for s in steps):
            return web.json_response({"error": "expected a JSON list of step objects"}, status=400)
        state.steps.extend(steps)
        return web.json_response({"queued": len(state.steps)})

    async def control_requests(request: web.Request) -> web.Response:
        return web.json_response(state.requests)

    async def control_timings(request: web.Request) -> web.Response:
        return web.json_response(state.timings)

    async def control_reset(request: web.Request) -> web.Response:
        state.reset()
        return web.json_response({"ok": True})

    async def control_latency(request: web.Request) -> web.Response:
        state.latency = float((await request.json())["seconds"])
        return web.json_response({"seconds": state.latency})

    async def control_health(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    # Image data URLs can be large; the 1 MiB default would reject them.
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.add_routes([
        web.post("/v1/chat/completions", chat_completions),
        web.post("/_control/script", control_script),
        web.get("/_control/requests", control_requests),
        web.get("/_control/timings", control_timings),
        web.post("/_control/reset", control_reset),
        web.post("/_control/latency", control_latency),
        web.get("/_control/health", control_health),
    ])
    return app


async def serve(port: int, latency: float = 0.0, host: str = _HOST) -> None:
    """Serve until SIGTERM/SIGINT; prints the ready line once listening."""
    from aiohttp import web

    # Short shutdown_timeout: in-flight (sleeping) requests need no graceful drain in a fake.
    runner = web.AppRunner(build_app(FakeOpenAIState(latency)), access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    # A large backlog so bursts of thousands of new connections are not refused.
    site = web.TCPSite(runner, host, port, backlog=4096)
    await site.start()
    actual_port = runner.addresses[0][1]
    print(f"listening on http://{host}:{actual_port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description="Fake OpenAI Chat Completions server")
    parser.add_argument("--port", type=int, default=0, help="TCP port (0: any free port)")
    parser.add_argument("--host", default=_HOST)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every completion")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.port, args.latency, args.host))


# ---------------------------------------------------------------------------
# Client-side handle for tests
# ---------------------------------------------------------------------------


class FakeOpenAIServer:
    """Runs the fake server in a subprocess and controls it over HTTP.

    ``base_url`` is what to pass to ``AsyncOpenAI(base_url=...)``.
    """

    def __init__(self, port: int | None = None, *, latency: float = 0.0,
                 startup_timeout: float = 15.0) -> None:
        """Configure the server; ``port=None`` lets the server pick a free one."""
        self._requested_port = port or 0
        self._port: int | None = None
        self._latency = latency
        self._startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmpdir: Path | None = None

    @property
    def port(self) -> int:
        """TCP port the server listens on (after :meth:`start`)."""
        if self._port is None:
            raise RuntimeError("FakeOpenAIServer is not started")
        return self._port

    @property
    def base_url(self) -> str:
        """OpenAI API base URL, e.g. ``http://127.0.0.1:PORT/v1``."""
        return f"http://{_HOST}:{self.port}/v1"

    def start(self) -> "FakeOpenAIServer":
        """Start the subprocess and wait until it answers the health check."""
        if self._proc is not None and self._proc.poll() is None:
            return self
        self._tmpdir = Path(tempfile.mkdtemp(prefix="fake-openai-"))
        log_path = self._tmpdir / "server.log"
        # Run this very file as a script: works whatever the cwd and whether or not `tests` is a package.
        cmd = [sys.executable, str(Path(__file__).resolve()),
               "--port", str(self._requested_port), "--latency", str(self._latency)]
        try:
            with open(log_path, "wb") as log:
                self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                              stderr=subprocess.STDOUT, cwd=self._tmpdir)
            atexit.register(self.stop)
            self._wait_until_ready(log_path)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_ready(self, log_path: Path) -> None:
        """Wait for the ready line, then for the health endpoint."""
        assert self._proc is not None
        deadline = time.monotonic() + self._startup_timeout
        while True:
            code = self._proc.poll()
            output = log_path.read_text(errors="replace")
            if code is not None:
                raise RuntimeError(f"fake OpenAI server exited with code {code}:\n{output[-3000:]}")
            found = _READY_RE.search(output)
            if found:
                self._port = int(found.group(1))
                try:
                    self._call("GET", "/_control/health")
                    return
                except OSError:
                    pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"fake OpenAI server not ready after {self._startup_timeout:.0f}s:\n{output[-3000:]}"
                )
            time.sleep(0.05)

    def _call(self, method: str, path: str, payload: Any = None) -> Any:
        """Send a control request and return the decoded JSON answer."""
        conn = http.client.HTTPConnection(_HOST, self.port, timeout=10)
        try:
            body = None if payload is None else json.dumps(payload).encode()
            headers = {"Content-Type": "application/json"} if body is not None else {}
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
            if response.status != 200:
                raise RuntimeError(f"{method} {path} -> {response.status}: {data[:500]!r}")
            return json.loads(data)
        finally:
            conn.close()

    def script(self, steps: list[dict[str, Any]]) -> None:
        """Queue scripted steps (appended after any already queued)."""
        self._call("POST", "/_control/script", list(steps))

    def requests(self) -> list[dict[str, Any]]:
        """Return recorded chat-completion request bodies, in arrival order."""
        return self._call("GET", "/_control/requests")

    def timings(self) -> list[tuple[str, float, float]]:
        """(last user text, received at, answered at) of each completion answered."""
        return [tuple(t) for t in self._call("GET", "/_control/timings")]

    def reset(self) -> None:
        """Clear the script and recorded requests; restore the start latency."""
        self._call("POST", "/_control/reset", {})

    def set_latency(self, seconds: float) -> None:
        """Set the latency added to every completion."""
        self._call("POST", "/_control/latency", {"seconds": seconds})

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s); idempotent."""
        from adapters.tansu_broker import stop_process  # only the client half needs it

        proc, self._proc = self._proc, None
        if proc is not None:
            stop_process(proc)
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None
        atexit.unregister(self.stop)

    def __enter__(self) -> "FakeOpenAIServer":
        """Start the server (context manager entry)."""
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        """Stop the server (context manager exit)."""
        self.stop()


if __name__ == "__main__":
    main()
