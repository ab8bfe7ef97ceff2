#!/usr/bin/env bash
# The gateway benchmark in one command (SPEC 11); bench/bench.py's docstring describes the rows.
#
#   bench/run.sh [--duration S] [--rounds N] [--connections C] [--rows a,b,c] [--soak S] [--json FILE]
#
#   --duration S     seconds measured per row and round (default 10)
#   --rounds N       rounds, bare and gateway rows measured side by side in each (default 3)
#   --connections C  keep-alive connections (default 16; 50 compares with the mitmproxy findings)
#   --rows           of direct,bare,bare-lean,gw-mem,gw-cached,gw-redis,gw-cluster,gw-workers,gw-full,gw-1k,
#                    gw-trace,bare-100k,gw-100k,bare-https,gw-https (default: all)
#   --soak S         then S seconds of sustained load on the gateway, reporting its RSS growth
#
# Installs what it needs from Debian when missing (as root): nginx-light (the upstream), wrk, and
# for the rows that use them redis-server and hey. Everything listens on 127.0.0.1 on
# free ports and is stopped at exit, also on Ctrl-C or an error. Prints a table and writes the
# same as JSON to bench/results/<UTC timestamp>.json. Exit status: 0 ok; 1 a row, check or the
# soak failed; 77 a tool is missing and could not be installed.
# BENCH_PYTHON: an interpreter with mitmproxy 12 (its mitmdump is used for the bare rows); by
# default the project's .venv, created or updated first. Gateway rows always use ./run_proxy.sh.
set -euo pipefail
source "$(dirname "$0")/../scripts/env.sh"
cd "$GW_ROOT"
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

rows="direct,bare,bare-lean,gw-mem,gw-cached,gw-redis,gw-cluster,gw-workers,gw-full,gw-1k,gw-trace,bare-100k,gw-100k,bare-https,gw-https"
prev=""
for arg in "$@"; do
    case "$arg" in
        --rows=*) rows="${arg#--rows=}" ;;
        -h|--help) exec "${BENCH_PYTHON:-python3}" "$GW_ROOT/bench/bench.py" --help ;;
    esac
    if [ "$prev" = "--rows" ]; then rows="$arg"; fi
    prev="$arg"
done

missing=0
gw_apt_ensure wrk wrk || { gw_log "bench: wrk is not installed and could not be installed"; missing=1; }
if ! gw_apt_ensure nginx nginx-light; then
    gw_apt_ensure nginx nginx || { gw_log "bench: nginx is not installed and could not be installed"; missing=1; }
fi
if [ "$missing" = 1 ]; then exit 77; fi
case ",$rows," in
    *,gw-redis,*|*,gw-cluster,*|*,gw-workers,*) gw_apt_ensure redis-server redis-server || gw_log "bench: no redis-server: Redis rows will fail" ;;
esac
case ",$rows," in
    *,gw-cluster,*) gw_apt_ensure redis-cli redis-tools || gw_log "bench: no redis-cli: the cluster row will fail" ;;
esac
case ",$rows," in
    *https*) gw_apt_ensure hey hey || { gw_log "bench: hey is not installed and could not be installed"; exit 77; } ;;
esac

if [ -n "${BENCH_PYTHON:-}" ]; then
    py="$BENCH_PYTHON"
else
    gw_ensure_venv ""
    py="$GW_PY"
fi

workdir="$(mktemp -d "${TMPDIR:-/tmp}/gw-bench.XXXXXX")"
child=""
cleanup() {
    local rc=$?
    trap - EXIT INT TERM HUP
    if [ -n "$child" ] && kill -0 "$child" 2>/dev/null; then
        kill -TERM "$child" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$child" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$child" 2>/dev/null || true
    fi
    # Whatever bench.py started and could not stop (it records each process group it starts).
    if [ -f "$workdir/pgids" ]; then
        while read -r pgid; do
            kill -TERM -- "-$pgid" 2>/dev/null || true
        done < "$workdir/pgids"
        sleep 0.2
        while read -r pgid; do
            kill -KILL -- "-$pgid" 2>/dev/null || true
        done < "$workdir/pgids"
    fi
    if [ "$rc" = 0 ] || [ -z "$(ls -A "$workdir")" ]; then
        rm -rf "$workdir"
    else
        gw_log "bench: logs of this run are in $workdir"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# In the background and waited for, so a TERM to this script is handled at once (by the trap).
"$py" "$GW_ROOT/bench/bench.py" --workdir "$workdir" "$@" &
child=$!
set +e
wait "$child"
rc=$?
set -e
child=""
exit "$rc"
