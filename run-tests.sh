#!/usr/bin/env bash
# Sets up everything the test suite needs on a fresh Debian machine, as root, and runs it:
# Debian packages, a virtualenv with the project and its test tools, then ruff, mypy, pytest.
# The tests make their own network namespaces, PostgreSQL and clamd instances, and clean up.
set -euo pipefail
cd "$(dirname "$0")"

if [ "$(id -u)" != 0 ]; then
    echo "run-tests.sh: the tests run as root (they create network namespaces)" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
if [ -z "${SKIP_APT:-}" ]; then
    apt=(apt-get -o DPkg::Lock::Timeout=600)  # another apt may hold the dpkg lock: wait
    "${apt[@]}" update -qq
    mapfile -t packages < <(grep -v '^#' debian-packages.txt)
    "${apt[@]}" install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip >/dev/null
.venv/bin/pip install -q -e '.[test]'

.venv/bin/ruff check honeytrap plugins tests bench
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
