#!/usr/bin/env bash
# The whole test suite: unit, acceptance (features/), integration. It installs what
# is missing, then starts its own broker, PostgreSQL and model server on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
exec .venv/bin/python -m pytest "$@"
