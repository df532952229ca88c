#!/usr/bin/env bash
# The whole test suite: unit, acceptance (features/), integration. It installs what
# is missing, then starts its own broker, PostgreSQL and model server on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
# Two processes (pytest-xdist), each with its own broker, PostgreSQL, Redis and model
# server: most integration tests wait (on rebalances, slow model calls, a minute's
# rate limit), so two run side by side on two cores. TEST_PROCESSES=0 runs them in one.
exec .venv/bin/python -m pytest -n "${TEST_PROCESSES:-2}" "$@"
