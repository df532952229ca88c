#!/usr/bin/env bash
# Runs `chater-gpt demo`: embedded broker, worker, SQLite store; the offline model
# unless OPENAI_API_KEY is set. Everything it starts, it stops.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/chater-gpt demo "$@"
