#!/usr/bin/env bash
# From a fresh clone to a green test run: Python >= 3.12 venv, the project with its test extras,
# redis-server, redis-cli and redis-sentinel for the quota and Redis engine tests, chromium, the
# Node.js test's npm package, then ruff, mypy and pytest. Arguments go to pytest.
set -euo pipefail
source "$(dirname "$0")/scripts/env.sh"
cd "$GW_ROOT"
gw_ensure_venv test
gw_apt_ensure redis-server redis-server || gw_log "gateway: redis-server unavailable; Redis tests will be skipped"
gw_apt_ensure redis-cli redis-tools || gw_log "gateway: redis-cli unavailable; Redis Cluster tests will be skipped"
gw_apt_ensure redis-sentinel redis-sentinel || gw_log "gateway: redis-sentinel unavailable (Sentinel tests run redis-server --sentinel)"
gw_apt_ensure curl curl || true
gw_apt_ensure chromium chromium || gw_log "gateway: chromium unavailable; the status page browser test will be skipped"
# Node's https module through the gateway (tests/test_e2e_node.py): its one npm package, from the lockfile.
if command -v npm >/dev/null 2>&1 && [ ! -d tests/node/node_modules/https-proxy-agent ]; then
    (cd tests/node && timeout 120 npm ci --no-audit --no-fund --loglevel=error) \
        || gw_log "gateway: npm ci in tests/node failed; the Node.js client test will be skipped"
fi
"$GW_PY" -m ruff check addons gateway_client tests bench scripts
"$GW_PY" -m mypy  # files and per-module strictness: [tool.mypy] in pyproject.toml
exec "$GW_PY" -m pytest -p no:cacheprovider "$@"
