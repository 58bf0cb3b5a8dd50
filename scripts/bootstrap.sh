#!/usr/bin/env bash
# Make a fresh Debian / Raspberry Pi OS machine ready for `make test` and `make demo`:
# system packages (installed with apt-get when running as root, otherwise named exactly),
# then a virtual environment with the Python dependencies. Safe to run again: it only
# does what is missing.
set -euo pipefail

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
# command -> Debian package that provides it
declare -A NEED=(
    [mosquitto]=mosquitto
    [gpsd]=gpsd
    [gpsfake]=gpsd-clients
    # libfaketime: part of the suite runs with the clock moved (make test, timeshift)
    [faketime]=faketime
    # the relay's page is tested in a real browser, headless, driven by Selenium
    [chromium]=chromium
    [chromedriver]=chromium-driver
    # the ModemManager backend is tested against a fake service on a private bus
    [dbus-daemon]=dbus-daemon
    # voice notes: ALSA capture, Ogg Opus, and the simulator's spoken sentence
    [arecord]=alsa-utils
    [opusenc]=opus-tools
    [espeak-ng]=espeak-ng
)

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]; }

missing=()
for cmd in "${!NEED[@]}"; do
    have "$cmd" || missing+=("${NEED[$cmd]}")
done
# The relay's PostgreSQL tests start their own server (initdb in a temp dir); Debian keeps
# initdb off PATH, in /usr/lib/postgresql/<major>/bin.
if ! have initdb && ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
    missing+=("postgresql")
fi
# venv/ensurepip live in a separate package on Debian.
if ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    missing+=("python3-venv")
fi
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "sosbeacon needs Python 3.11 or newer; $PYTHON is $("$PYTHON" -V 2>&1)." >&2
    echo "On Raspberry Pi OS / Debian 12 (bookworm) the system python3 is 3.11." >&2
    exit 1
fi

if [ ${#missing[@]} -gt 0 ]; then
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "bootstrap: installing ${missing[*]} with apt-get"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        # --no-install-recommends keeps gpsd-clients from pulling a desktop stack.
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "bootstrap: missing system packages: ${missing[*]}" >&2
        echo "Install them with:" >&2
        echo "    sudo apt-get install ${missing[*]}" >&2
        echo "then run this command again." >&2
        exit 1
    fi
fi

stamp="$VENV/.bootstrap-stamp"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    if [ ! -x "$VENV/bin/python" ]; then
        echo "bootstrap: creating virtual environment in $VENV"
        "$PYTHON" -m venv "$VENV"
    fi
    echo "bootstrap: installing Python dependencies"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -e '.[dev]'
    touch "$stamp"
fi
