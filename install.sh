#!/usr/bin/env bash
# Installs honeytrap on a Debian machine, as root:
#   Debian packages, a virtualenv in /opt/honeytrap, plugins in /usr/lib/honeytrap/plugins,
#   templates in /usr/share/honeytrap/templates, /etc/honeytrap/honeytrap.conf (kept if present),
#   the man page, the systemd unit and the logrotate snippet, and a `honeytrap` system user.
# Options: --no-apt (packages are already there), --prefix DIR (default /opt/honeytrap).
set -euo pipefail
cd "$(dirname "$0")"

PREFIX=/opt/honeytrap
APT=1
while [ $# -gt 0 ]; do
    case "$1" in
        --no-apt) APT=0 ;;
        --prefix) PREFIX=$2; shift ;;
        *) echo "install.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done

if [ "$(id -u)" != 0 ]; then
    echo "install.sh: run as root" >&2
    exit 1
fi

if [ "$APT" = 1 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # Only what running needs (the test-only packages are run-tests.sh's business).
    apt-get install -y -qq --no-install-recommends $(sed -n '/^# build and run/,/^# tests/p' debian-packages.txt | grep -v '^#') >/dev/null
fi

python3 -m venv "$PREFIX"
"$PREFIX/bin/pip" install -q --upgrade pip >/dev/null
"$PREFIX/bin/pip" install -q '.[downloads]'
ln -sf "$PREFIX/bin/honeytrap" /usr/local/sbin/honeytrap

install -d -m 755 /usr/lib/honeytrap/plugins /usr/share/honeytrap/templates /etc/honeytrap
install -m 644 plugins/*.py /usr/lib/honeytrap/plugins/
for t in templates/*_tcp templates/*_udp; do install -m 644 "$t" /usr/share/honeytrap/templates/; done
[ -e /etc/honeytrap/honeytrap.conf ] || install -m 644 etc/honeytrap.conf /etc/honeytrap/honeytrap.conf

if ! getent passwd honeytrap >/dev/null; then
    useradd --system --no-create-home --home-dir /var/lib/honeytrap --shell /usr/sbin/nologin honeytrap
fi
install -d -m 750 -o honeytrap -g honeytrap /var/lib/honeytrap /var/lib/honeytrap/attacks /var/lib/honeytrap/downloads
install -d -m 755 /var/log/honeytrap

install -d /usr/local/share/man/man8
install -m 644 man/honeytrap.8 /usr/local/share/man/man8/honeytrap.8
if [ -d /etc/systemd/system ]; then
    sed "s|/opt/honeytrap|$PREFIX|g" etc/honeytrap.service > /etc/systemd/system/honeytrap.service
    command -v systemctl >/dev/null && systemctl daemon-reload 2>/dev/null || true
fi
[ -d /etc/logrotate.d ] && install -m 644 etc/logrotate.d/honeytrap /etc/logrotate.d/honeytrap

echo "honeytrap installed: $PREFIX/bin/honeytrap, configuration /etc/honeytrap/honeytrap.conf"
