#!/usr/bin/env bash
# Runs the gateway: mitmdump (or mitmweb) with the addon chain of addons/gateway.py.
# Every argument is passed on to mitmproxy. Environment knobs (SPEC 2):
#   GATEWAY_LISTEN  host:port to listen on            (default 127.0.0.1:8080)
#   GATEWAY_RULES   rules directory                   (default ./rules)
#   GATEWAY_REDIS   redis:// URL for shared state     (default: in-memory state)
#   GATEWAY_ADMIN   admin listener host:port, or off  (default 127.0.0.1:9091)
#   GATEWAY_LOG     access-log file                   (default: stdout)
#   GATEWAY_RULES_URL  URL polled for remote rules    (default: none)
#   GATEWAY_UI=web  run mitmweb instead of mitmdump
#   GATEWAY_WORKERS=N  N mitmdump processes behind haproxy on the listen address
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

# Options every gateway process gets. The chain checks connection_strategy at start.
gw_common_args() {
    printf '%s\n' \
        -s "$GW_ROOT/addons/gateway.py" \
        --set "confdir=$GW_ROOT/certs" \
        --set connection_strategy=lazy \
        --set "gateway_rules=${GATEWAY_RULES:-$GW_ROOT/rules}" \
        --set "gateway_redis=${GATEWAY_REDIS:-}" \
        --set "gateway_log=${GATEWAY_LOG:-}" \
        --set "gateway_rules_url=${GATEWAY_RULES_URL:-}" \
        --set stream_large_bodies=1m \
        --set flow_detail=0
}
mapfile -t common < <(gw_common_args)

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
    extra+=(--set web_open_browser=false)
elif [ -n "${GATEWAY_UI:-}" ]; then
    gw_log "gateway: GATEWAY_UI must be 'web' or unset, got '${GATEWAY_UI}'"
    exit 2
fi
# exec: SIGINT/SIGTERM go straight to mitmproxy, which shuts the chain down cleanly.
exec "$GW_ROOT/.venv/bin/$ui" --listen-host "$listen_host" --listen-port "$listen_port" \
    "${common[@]}" --set "gateway_admin=${GATEWAY_ADMIN:-127.0.0.1:9091}" "${extra[@]}" "$@"
