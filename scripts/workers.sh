#!/usr/bin/env bash
# N gateway processes behind haproxy (GATEWAY_WORKERS=N of run_proxy.sh; SPEC 2).
#
#   scripts/workers.sh N LISTEN_HOST LISTEN_PORT <common mitmdump args...> -- <user args...>
#
# One mitmdump is one Python thread, so one core: this starts N of them on free internal ports of
# 127.0.0.1, each with the common args, its own gateway_admin and the user args, and Debian's
# haproxy in TCP mode on LISTEN_HOST:LISTEN_PORT in front of them (leastconn, health-checked; TCP
# mode keeps CONNECT tunnels and Proxy-Authorization end to end). Installs haproxy if missing.
#
# Admin listeners: GATEWAY_ADMIN=host:port (default 127.0.0.1:9091) gives worker i (0..N-1)
# host:port+i; GATEWAY_ADMIN=off turns them all off.
# Without GATEWAY_REDIS, quotas, provider tokens and nonces are per process: it warns and starts.
# SIGINT/SIGTERM stop everything and exit 0. If any worker or haproxy exits on its own, the rest is
# stopped too and the script exits 1, so a supervisor restarts the whole set.
set -euo pipefail
source "$(dirname "$0")/env.sh"
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

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

mitmdump="$GW_ROOT/.venv/bin/mitmdump"
[ -x "$mitmdump" ] || { gw_log "gateway: $mitmdump not found (run_proxy.sh creates .venv)"; exit 1; }
if ! gw_apt_ensure haproxy haproxy; then
    gw_log "gateway: GATEWAY_WORKERS needs haproxy (Debian package 'haproxy'); it is not installed and could not be installed"
    exit 1
fi

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

# N distinct free ports, held open together while choosing so none is picked twice.
mapfile -t ports < <("$GW_ROOT/.venv/bin/python" - "$n" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print("\n".join(str(s.getsockname()[1]) for s in socks))
EOF
)
[ "${#ports[@]}" -eq "$n" ] || { gw_log "gateway: could not find $n free ports"; exit 1; }

tmp="$(mktemp -d "${TMPDIR:-/tmp}/gw-workers.XXXXXX")"
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
    rm -rf "$tmp"
}
trap stop_all EXIT
trap 'stopping=1' INT TERM

for ((i = 0; i < n; i++)); do
    if [ -n "$admin_port" ]; then worker_admin="$admin_host:$((admin_port + i))"; else worker_admin="off"; fi
    "$mitmdump" --listen-host 127.0.0.1 --listen-port "${ports[$i]}" "${common[@]}" \
        --set "gateway_admin=$worker_admin" "${user[@]}" &
    pids+=("$!")
    what[$!]="worker $i (127.0.0.1:${ports[$i]}, admin $worker_admin)"
done

# haproxy only once every worker listens: its health checks would otherwise start them as down.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
deadline=$((SECONDS + 120))
for ((i = 0; i < n; i++)); do
    until port_open "${ports[$i]}"; do
        if [ "$stopping" = 1 ]; then exit 0; fi
        if ! kill -0 "${pids[$i]}" 2>/dev/null; then
            gw_log "gateway: ${what[${pids[$i]}]} exited during start; stopping all"
            exit 1
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            gw_log "gateway: ${what[${pids[$i]}]} did not listen within 120 s; stopping all"
            exit 1
        fi
        sleep 0.2
    done
done

# Connections: each proxied one takes two descriptors; stay within what this shell may open.
nofile="$(ulimit -n)"
if [ "$nofile" = unlimited ] || [ "$nofile" -gt 200000 ]; then nofile=200000; fi
maxconn=$(( (nofile - 200) / 2 ))
if [ "$maxconn" -lt 100 ]; then maxconn=100; fi
{
    printf 'global\n    maxconn %d\n\n' "$maxconn"
    printf 'defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 1h\n    timeout server 1h\n'
    printf '    timeout check 2s\n\n'
    printf 'frontend gateway\n    bind %s:%s\n    maxconn %d\n    default_backend workers\n\n' \
        "$listen_host" "$listen_port" "$maxconn"
    printf 'backend workers\n    balance leastconn\n'
    for ((i = 0; i < n; i++)); do
        printf '    server w%d 127.0.0.1:%s check inter 2s fall 3 rise 2\n' "$i" "${ports[$i]}"
    done
} > "$tmp/haproxy.cfg"
haproxy -c -q -f "$tmp/haproxy.cfg" || { gw_log "gateway: haproxy rejected $tmp/haproxy.cfg"; exit 1; }
haproxy -db -f "$tmp/haproxy.cfg" &
pids+=("$!")
what[$!]="haproxy ($listen_host:$listen_port)"
gw_log "gateway: $n workers on 127.0.0.1:${ports[*]} behind haproxy on $listen_host:$listen_port"

set +e
dead=""
wait -n -p dead "${pids[@]}"
rc=$?
set -e
if [ "$stopping" = 1 ]; then
    gw_log "gateway: stopping $n workers and haproxy"
    exit 0
fi
gw_log "gateway: ${what[$dead]:-a process} exited with status $rc; stopping all so the set restarts together"
exit 1
