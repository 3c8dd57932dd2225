#!/usr/bin/env bash
# Installs honeytrap on a Debian machine, as root, from the wheel built from this tree (what is
# installed is what the wheel holds):
#   the Debian packages it runs with; a virtualenv of the system's Python (/usr/bin/python3,
#   3.11 or newer) in /opt/honeytrap with honeytrap and every extra the shipped configuration
#   offers (downloads, postgres, hpfeeds, metrics; the ClamAV plugin's clamd client is built in);
#   /etc/honeytrap/honeytrap.conf (an existing one is kept); from the package's own data the man
#   page, the systemd unit and the logrotate snippet; a `honeytrap` system user and its
#   directories. The plugins and templates are the package's own (honeytrap --print-config).
# Run it again to upgrade in place: the virtualenv is reused, honeytrap reinstalled from the
# new wheel, the configuration kept.
#
# Options:
#   --no-apt       the Debian packages are already there
#   --with-clamd   also install clamav-daemon (the ClamAV plugin scans with a running clamd)
#   --prefix DIR   the virtualenv (default /opt/honeytrap)
#   --wheel FILE   install this wheel instead of building one from the tree
#   --root DIR     put the system files (/etc, /usr/local, /var) under DIR and leave users,
#                  ownership and systemd alone: for packaging and for the tests
set -euo pipefail
cd "$(dirname "$0")"

PREFIX=/opt/honeytrap
ROOT=
APT=1
CLAMD=0
WHEEL=
SYSTEM_PYTHON=/usr/bin/python3
# Extras the shipped configuration's plugins need (pyproject.toml).
EXTRAS=downloads,postgres,hpfeeds,metrics
# How long apt-get waits for another apt or unattended-upgrades to release the dpkg lock.
DPKG_LOCK_TIMEOUT=600

die() { echo "install.sh: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --no-apt) APT=0 ;;
        --with-clamd) CLAMD=1 ;;
        --prefix) [ $# -ge 2 ] || die "--prefix needs a directory"; PREFIX=$2; shift ;;
        --wheel) [ $# -ge 2 ] || die "--wheel needs a file"; WHEEL=$(realpath "$2"); shift ;;
        --root) [ $# -ge 2 ] || die "--root needs a directory"; ROOT=$(realpath -m "$2"); shift ;;
        *) echo "install.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done

[ "$(id -u)" = 0 ] || die "run as root"

if [ "$APT" = 1 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt=(apt-get -o "DPkg::Lock::Timeout=$DPKG_LOCK_TIMEOUT")
    "${apt[@]}" update -qq
    # Only what running needs (the test-only packages are run-tests.sh's business).
    mapfile -t packages < <(sed -n '/^# build and run/,/^# tests/p' debian-packages.txt | grep -v '^#')
    if [ "$CLAMD" = 1 ]; then packages+=(clamav-daemon); fi
    "${apt[@]}" install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi

# The system's Python, not the first python3 on PATH (a pyenv under /root, which the unit's
# ProtectHome=yes hides from the service).
[ -x "$SYSTEM_PYTHON" ] || die "$SYSTEM_PYTHON is missing (apt-get install python3 python3-venv)"
"$SYSTEM_PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "$SYSTEM_PYTHON is $("$SYSTEM_PYTHON" -V 2>&1); honeytrap needs 3.11 or newer"

# A virtualenv of another Python (an earlier install from a pyenv) is made anew.
if [ -x "$PREFIX/bin/python" ] && [ "$(realpath "$PREFIX/bin/python")" != "$(realpath "$SYSTEM_PYTHON")" ]; then
    echo "install.sh: $PREFIX was made with $(realpath "$PREFIX/bin/python"): making it anew" >&2
    rm -rf "$PREFIX"
fi
[ -x "$PREFIX/bin/python" ] || "$SYSTEM_PYTHON" -m venv "$PREFIX"
pip=("$PREFIX/bin/pip" install -q --disable-pip-version-check)

if [ -z "$WHEEL" ]; then
    build=$(mktemp -d)
    trap 'rm -rf "$build"' EXIT
    # From a clean copy of the tree: setuptools builds in the source directory, and a stale
    # build/lib (a module since removed) would go into the wheel.
    mkdir "$build/src"
    tar --exclude=./build --exclude=./dist --exclude=./.venv --exclude=./.git \
        --exclude='*.egg-info' --exclude=__pycache__ -cf - . | tar -xf - -C "$build/src"
    "$PREFIX/bin/pip" wheel -q --disable-pip-version-check --no-deps -w "$build" "$build/src"
    WHEEL=$(echo "$build"/honeytrap-*.whl)
fi
[ -f "$WHEEL" ] || die "no wheel at $WHEEL"
# Dependencies and extras to what the new wheel wants; then honeytrap itself reinstalled even
# when its version did not change (a rebuilt tree).
"${pip[@]}" --upgrade "${WHEEL}[$EXTRAS]"
"${pip[@]}" --force-reinstall --no-deps "$WHEEL"
data=$("$PREFIX/bin/python" -c 'import honeytrap.resources as r; print(r.data_path("etc").parent)')

install -d "$ROOT/usr/local/sbin"
ln -sfn "$PREFIX/bin/honeytrap" "$ROOT/usr/local/sbin/honeytrap"

install -d -m 755 "$ROOT/etc/honeytrap"
conf=$ROOT/etc/honeytrap/honeytrap.conf
if [ -e "$conf" ]; then
    echo "install.sh: keeping $conf (the new default: honeytrap --print-config)"
    if grep -Eq '^[[:space:]]*(plugin_dir|response_dir)[[:space:]]*=' "$conf"; then
        echo "install.sh: note: $conf names plugin_dir or response_dir; install.sh no longer" \
             "updates /usr/lib/honeytrap or /usr/share/honeytrap: remove those lines to use" \
             "the installed package's own plugins and templates" >&2
    fi
else
    install -m 644 "$data/etc/honeytrap.conf" "$conf"
fi

owner=()
if [ -z "$ROOT" ]; then
    if ! getent passwd honeytrap >/dev/null; then
        useradd --system --no-create-home --home-dir /var/lib/honeytrap --shell /usr/sbin/nologin honeytrap
    fi
    owner=(-o honeytrap -g honeytrap)
fi
install -d -m 750 "${owner[@]}" "$ROOT/var/lib/honeytrap" "$ROOT/var/lib/honeytrap/attacks" \
    "$ROOT/var/lib/honeytrap/downloads" "$ROOT/var/spool/honeytrap"
install -d -m 755 "$ROOT/var/log/honeytrap"

install -d "$ROOT/usr/local/share/man/man8"
install -m 644 "$data/man/honeytrap.8" "$ROOT/usr/local/share/man/man8/honeytrap.8"
if [ -n "$ROOT" ] || [ -d /etc/systemd/system ]; then
    install -d "$ROOT/etc/systemd/system"
    sed "s|/opt/honeytrap|$PREFIX|g" "$data/etc/honeytrap.service" > "$ROOT/etc/systemd/system/honeytrap.service"
    if [ -z "$ROOT" ] && command -v systemctl >/dev/null; then
        systemctl daemon-reload 2>/dev/null || true
    fi
fi
if [ -n "$ROOT" ] || [ -d /etc/logrotate.d ]; then
    install -d "$ROOT/etc/logrotate.d"
    install -m 644 "$data/etc/logrotate.d/honeytrap" "$ROOT/etc/logrotate.d/honeytrap"
fi

echo "honeytrap $("$PREFIX/bin/honeytrap" -v | cut -d' ' -f2) installed: $PREFIX/bin/honeytrap, configuration $conf"
