#!/usr/bin/env bash
# Runs the gateway: mitmdump (or mitmweb) with the addon chain of addons/gateway.py.
# Every argument is passed on to mitmproxy. Environment knobs (SPEC 2):
#   GATEWAY_LISTEN  host:port to listen on            (default 127.0.0.1:8080)
#   GATEWAY_RULES   rules directory                   (default ./rules)
#   GATEWAY_REDIS   redis:// URL for shared state     (default: in-memory state)
#   GATEWAY_ADMIN   admin listener host:port, or off  (default 127.0.0.1:9091)
#   GATEWAY_LOG     access-log file                   (default: stdout)
#   GATEWAY_CONFDIR mitmproxy confdir: the CA         (default ./certs)
#   GATEWAY_RULES_URL  URL polled for remote rules    (default: none)
#   GATEWAY_OTLP    OTLP/HTTP collector for traces    (default: no tracing)
#   GATEWAY_UI=web  run mitmweb instead of mitmdump
#   GATEWAY_WORKERS=N  N mitmdump processes sharing the listen address (SO_REUSEPORT)
set -euo pipefail
source "$(dirname "$0")/scripts/env.sh"
cd "$GW_ROOT"
gw_ensure_venv ""

listen="${GATEWAY_LISTEN:-127.0.0.1:8080}"
listen_host="${listen%:*}"
listen_port="${listen##*:}"
if [ -z "$listen_host" ] || [ "$listen_host" = "$listen" ] || ! [[ "$listen_port" =~ ^[0-9]+$ ]]; then
    gw_log "gateway: GATEWAY_LISTEN must be host:port, got '$listen'"
    exit 2
fi
mkdir -p "$GW_ROOT/certs"

# mitmproxy refuses an option given twice with --set, so a default is passed only when the user's
# own arguments do not set that option.
user_args=("$@")
user_sets() {
    local i name="$1"
    for ((i = 0; i < ${#user_args[@]}; i++)); do
        case "${user_args[i]}" in
            --set) [[ "${user_args[i+1]:-}" == "$name="* ]] && return 0 ;;
            --set="$name="*) return 0 ;;
        esac
    done
    return 1
}
common=(-s "$GW_ROOT/addons/gateway.py")
add_default() {  # add_default NAME VALUE
    user_sets "$1" || common+=(--set "$1=$2")
}
add_default confdir "${GATEWAY_CONFDIR:-$GW_ROOT/certs}"
add_default connection_strategy lazy
add_default gateway_rules "${GATEWAY_RULES:-$GW_ROOT/rules}"
add_default gateway_redis "${GATEWAY_REDIS:-}"
add_default gateway_log "${GATEWAY_LOG:-}"
add_default gateway_rules_url "${GATEWAY_RULES_URL:-}"
add_default gateway_otlp "${GATEWAY_OTLP:-}"
add_default flow_detail 0

# With the access log on stdout, mitmproxy's own log goes to stderr from its first line
# (scripts/mitmproxy_main.py; the chain moves the rest itself), so stdout is JSON lines only.
if [ -z "${GATEWAY_LOG:-}" ] && ! user_sets gateway_log; then
    export GATEWAY_TERMLOG_STDERR=1
else
    unset GATEWAY_TERMLOG_STDERR
fi

workers="${GATEWAY_WORKERS:-1}"
if ! [[ "$workers" =~ ^[0-9]+$ ]] || [ "$workers" -lt 1 ]; then
    gw_log "gateway: GATEWAY_WORKERS must be a positive number, got '$workers'"
    exit 2
fi
if [ "$workers" -gt 1 ]; then
    exec "$GW_ROOT/scripts/workers.sh" "$workers" "$listen_host" "$listen_port" "${common[@]}" -- "$@"
fi

ui="mitmdump"
extra=()
if [ "${GATEWAY_UI:-}" = "web" ]; then
    ui="mitmweb"
    user_sets web_open_browser || extra+=(--set web_open_browser=false)
elif [ -n "${GATEWAY_UI:-}" ]; then
    gw_log "gateway: GATEWAY_UI must be 'web' or unset, got '${GATEWAY_UI}'"
    exit 2
fi
# exec: SIGINT/SIGTERM go straight to mitmproxy, which shuts the chain down cleanly.
add_default gateway_admin "${GATEWAY_ADMIN:-127.0.0.1:9091}"
exec "$GW_PY" "$GW_ROOT/scripts/mitmproxy_main.py" "$ui" --listen-host "$listen_host" --listen-port "$listen_port" \
    "${common[@]}" "${extra[@]}" "$@"
