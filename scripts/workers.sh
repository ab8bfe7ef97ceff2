#!/usr/bin/env bash
# N gateway processes sharing one listen port (GATEWAY_WORKERS=N of run_proxy.sh; SPEC 2, 12).
#
#   scripts/workers.sh N LISTEN_HOST LISTEN_PORT <common mitmdump args...> -- <user args...>
#
# One mitmdump is one Python thread, so one core: this starts N of them, each with the common args,
# its own gateway_admin and the user args, all listening on LISTEN_HOST:LISTEN_PORT with SO_REUSEPORT
# (scripts/mitmdump_shared.py). The kernel spreads the callers' connections over the workers; there
# is no balancer in between, so every worker sees each caller's real address (`sources` and the
# access log name the caller) and no extra hop costs CPU. A CONNECT tunnel stays on one worker.
#
# Admin listeners: GATEWAY_ADMIN=host:port (default 127.0.0.1:9091) gives worker i (0..N-1)
# host:port+i; GATEWAY_ADMIN=off turns them all off.
# Without GATEWAY_REDIS, quotas, provider tokens and nonces are per process: it warns and starts.
# SIGINT/SIGTERM stop everything and exit 0. If any worker exits on its own, the rest is stopped
# too and the script exits 1, so a supervisor restarts the whole set.
set -euo pipefail
source "$(dirname "$0")/env.sh"

usage() { gw_log "usage: scripts/workers.sh N LISTEN_HOST LISTEN_PORT <common mitmdump args...> -- <user args...>"; exit 2; }
[ $# -ge 3 ] || usage
n="$1" listen_host="$2" listen_port="$3"
shift 3
if ! [[ "$n" =~ ^[0-9]+$ ]] || [ "$n" -lt 1 ]; then gw_log "gateway: worker count must be a positive number, got '$n'"; exit 2; fi
if ! [[ "$listen_port" =~ ^[0-9]+$ ]]; then gw_log "gateway: listen port must be a number, got '$listen_port'"; exit 2; fi
common=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do common+=("$1"); shift; done
[ $# -gt 0 ] && shift  # the "--"
user=("$@")

python="$GW_ROOT/.venv/bin/python"
[ -x "$python" ] || { gw_log "gateway: $python not found (run_proxy.sh creates .venv)"; exit 1; }

if [ "$n" -gt 1 ] && [ -z "${GATEWAY_REDIS:-}" ]; then
    gw_log "gateway: WARNING: $n workers without GATEWAY_REDIS: quotas, provider tokens and replay nonces are kept"
    gw_log "gateway: WARNING: per process, so the fleet admits up to $n times each quota. Set GATEWAY_REDIS=redis://..."
fi

admin="${GATEWAY_ADMIN:-127.0.0.1:9091}"
admin_host="" admin_port=""
if [ "$admin" != "off" ]; then
    admin_host="${admin%:*}" admin_port="${admin##*:}"
    if [ -z "$admin_host" ] || [ "$admin_host" = "$admin" ] || ! [[ "$admin_port" =~ ^[0-9]+$ ]]; then
        gw_log "gateway: GATEWAY_ADMIN must be host:port or off, got '$admin'"
        exit 2
    fi
fi

pids=()
declare -A what=()
stopping=0

stop_all() {
    local pid
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for _ in $(seq 1 100); do
        local alive=0
        for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap stop_all EXIT
trap 'stopping=1' INT TERM

# Every worker listens on the one address with SO_REUSEPORT: the kernel spreads connections over
# them, and each worker sees its callers' real addresses (no balancer hop in between).
for ((i = 0; i < n; i++)); do
    if [ -n "$admin_port" ]; then worker_admin="$admin_host:$((admin_port + i))"; else worker_admin="off"; fi
    "$python" "$GW_ROOT/scripts/mitmdump_shared.py" --listen-host "$listen_host" --listen-port "$listen_port" \
        "${common[@]}" --set "gateway_admin=$worker_admin" "${user[@]}" &
    pids+=("$!")
    what[$!]="worker $i (admin $worker_admin)"
done
gw_log "gateway: $n workers sharing $listen_host:$listen_port (SO_REUSEPORT)"

set +e
dead=""
wait -n -p dead "${pids[@]}"
rc=$?
set -e
if [ "$stopping" = 1 ]; then
    gw_log "gateway: stopping $n workers"
    exit 0
fi
gw_log "gateway: ${what[$dead]:-a process} exited with status $rc; stopping all so the set restarts together"
exit 1
