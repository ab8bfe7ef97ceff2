"""Smoke test of the benchmark (bench/run.sh): two short rows and its JSON results file.

It checks that the benchmark runs, measures, reports and cleans up; it never asserts a speed.
Skipped when wrk or nginx is missing and cannot be installed (run.sh exits 77 then)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline:
                found.append(f"{entry.name}: {cmdline}")
    return found


@pytest.mark.timeout(300)  # the first run may install wrk and nginx from Debian
def test_bench_direct_and_bare_rows(tmp_path: Path) -> None:
    if not (Path(sys.executable).parent / "mitmdump").exists():
        pytest.skip(f"no mitmdump beside {sys.executable}")
    results = tmp_path / "results.json"
    # TMPDIR: run.sh's scratch directory lands in tmp_path, so leftovers can be looked for.
    # GATEWAY_CONFDIR: the CA goes to a scratch directory, never into the repository's certs/.
    env = dict(os.environ, BENCH_PYTHON=sys.executable, TMPDIR=str(tmp_path), GATEWAY_CONFDIR=str(tmp_path / "ca"))
    proc = subprocess.run(
        [str(ROOT / "bench" / "run.sh"), "--duration", "1", "--rounds", "2", "--warmup", "1",
         "--first-warmup", "1", "--rows", "direct,bare,bare-lean,bare-100k", "--json", str(results)],
        env=env, capture_output=True, text=True, timeout=280, stdin=subprocess.DEVNULL,
    )
    if proc.returncode == 77:
        pytest.skip("benchmark tools unavailable: " + proc.stderr.strip()[-300:])
    assert proc.returncode == 0, proc.stdout + proc.stderr

    data = json.loads(results.read_text())
    rows = {row["name"]: row for row in data["rows"]}
    assert list(rows) == ["direct", "bare", "bare-lean", "bare-100k"]
    for name, row in rows.items():
        assert row["error"] is None, (name, row["error"])
        assert len(row["runs"]) == 2, name  # one per round
        assert row["rps"] > 0, name
        assert row["p50_ms"] > 0 and row["p99_ms"] >= row["p50_ms"], name
        for run in row["runs"]:
            assert run["requests"] > 0 and run["non2xx"] == 0, (name, run)
    assert rows["bare"]["ratio_vs_baseline"] == 1.0
    assert rows["bare-lean"]["ratio_vs_baseline"] > 0  # measured beside bare, round by round
    assert rows["direct"]["ratio_vs_baseline"] > 0
    assert data["params"]["connections"] == 16

    table = proc.stdout
    assert "req/s" in table and "direct" in table and "bare mitmdump" in table
    # Everything it started is gone, scratch directory included.
    assert not list(tmp_path.glob("gw-bench.*"))
    assert processes_mentioning(str(tmp_path)) == []
