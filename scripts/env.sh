# Shared by run_proxy.sh, run_tests.sh and bench/: find Python >= 3.12 and keep .venv up to date.
# Sourced, not run. Sets GW_ROOT and GW_PY (the venv's python).

GW_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

gw_log() { printf '%s\n' "$*" >&2; }

# Prints the path of the first interpreter that really is >= 3.12: PATH first, then pyenv's
# versions. pyenv shims for versions that are not active exist on PATH but fail when run, so
# every candidate is executed, not just looked up.
gw_find_python() {
    local candidate
    local -a candidates=()
    if [ -n "${GATEWAY_PYTHON:-}" ]; then candidates+=("$GATEWAY_PYTHON"); fi
    for name in python3.14 python3.13 python3.12 python3 python; do
        if command -v "$name" >/dev/null 2>&1; then candidates+=("$(command -v "$name")"); fi
    done
    local pyenv_root="${PYENV_ROOT:-$HOME/.pyenv}"
    if [ -d "$pyenv_root/versions" ]; then
        while IFS= read -r dir; do
            for name in python3.14 python3.13 python3.12; do
                [ -x "$dir/bin/$name" ] && candidates+=("$dir/bin/$name")
            done
        done < <(ls -1d "$pyenv_root"/versions/3.1[2-9]* 2>/dev/null | sort -rV)
    fi
    for candidate in "${candidates[@]}"; do
        if "$candidate" -c 'import sys, venv; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1; then
            printf '%s\n' "$candidate"
            return 0
        fi
    done
    return 1
}

# Creates or updates .venv. $1: pip extras ("" or "test").
gw_ensure_venv() {
    local extras="${1:-}"
    local venv="$GW_ROOT/.venv"
    local stamp="$venv/.installed${extras:+-$extras}"
    if [ -x "$venv/bin/python" ] && ! "$venv/bin/python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' 2>/dev/null; then
        gw_log "gateway: $venv uses Python < 3.12; recreating it"
        rm -rf "$venv"
    fi
    if [ ! -x "$venv/bin/python" ]; then
        local python
        if ! python="$(gw_find_python)"; then
            gw_log "gateway: no Python >= 3.12 found (looked on PATH and in ${PYENV_ROOT:-$HOME/.pyenv}/versions)."
            gw_log "gateway: mitmproxy 12 needs Python >= 3.12; on an older one pip silently installs mitmproxy 11."
            gw_log "gateway: install one (e.g. 'apt-get install python3.13' or 'pyenv install 3.12') or set GATEWAY_PYTHON."
            return 1
        fi
        gw_log "gateway: creating .venv with $python ($("$python" -V 2>&1))"
        "$python" -m venv "$venv" || return 1
    fi
    GW_PY="$venv/bin/python"
    # Reinstall only when pyproject.toml changed since the last install.
    if [ ! -f "$stamp" ] || [ "$GW_ROOT/pyproject.toml" -nt "$stamp" ]; then
        gw_log "gateway: installing the project into .venv${extras:+ (with $extras extras)}"
        local spec="$GW_ROOT"
        [ -n "$extras" ] && spec="$GW_ROOT[$extras]"
        "$GW_PY" -m pip install -q --disable-pip-version-check -e "$spec" || return 1
        "$GW_PY" -c 'import mitmproxy.version as v, sys; sys.exit(0 if v.VERSION.startswith("12.") else 1)' || {
            gw_log "gateway: mitmproxy 12 did not install into .venv"; return 1; }
        touch "$stamp"
    fi
    export GW_PY
}

# Installs a Debian package if its command is missing and we can (root + apt). $1 command, $2 package.
gw_apt_ensure() {
    command -v "$1" >/dev/null 2>&1 && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        gw_log "gateway: installing $2 (for $1)"
        if [ ! -f /tmp/.gw-apt-updated ]; then apt-get update -qq >/dev/null 2>&1 && touch /tmp/.gw-apt-updated; fi
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null 2>&1
    fi
    command -v "$1" >/dev/null 2>&1
}
