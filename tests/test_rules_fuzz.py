"""A seeded fuzz of rule files (SPEC 18): hundreds of generated files, hostile and merely broken,
through the loader `check` and every reload use. Each must end as a list of `file:line` problems
(or a valid rule set) quickly: no exception escapes, nothing hangs."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

from addons.rules.loader import load_sources
from tests.conftest import ROOT

VALID = """service: svc{n}
hosts: [svc{n}.test]
upstream:
  url: http://127.0.0.1:9
  timeout: 2s
  ca: {ca}
retry: {{attempts: 3, backoff: 100ms, on: [timeout, 503]}}
quota:
  - {{limit: 10/s, per: app}}
methods:
  get: {{method: GET, path: "/v1/{{id}}"}}
  send: {{method: POST, path: /v1/send, timeout: 1s}}
envelope: {{type: json, success_field: status, success_values: ["1"]}}
"""

FRAGMENTS = [
    "&a [*a]", "*undefined", "&x {k: *x}", "[" * 400 + "]" * 400, "{" * 300 + "}" * 300, '"\\0"', "'\0'",
    "? [1, 2]\n  : v", "? {a: 1}\n  : v", "1" * 5000, "2024-13-45", ".nan", ".inf", "-.inf", "-1", "1e999999",
    "!!binary aGVsbG8=", "!!set {a, b}", "!!python/object:os.system {}", "!!omap [a: 1]", "<<: *a",
    "file:/dev/zero", "file:fifo", "file:../outside.pem", "file:/etc/passwd", "file:\0x", "file:missing.pem",
    '"/{a}/{a}"', '"/{a"', "${UNSET_VAR_FOR_FUZZ}", "${A:-${B}}", "é\u202e\ufeff", "\t", "- - - -", "~", "null",
    "&b [lol, lol, lol, lol, lol, lol, lol, lol]", "%YAML 1.1", "---", "...", "|\n  block", ">-\n  folded",
    "{a: 1, a: 2}", "[1, [2, [3, [4]]]]", "0x7fffffffffffffff", "0o777", "true", "off", "yes", "''", '""',
]


def _laughs(levels: int) -> str:
    lines = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def generate(rng: random.Random, n: int) -> str:
    kind = rng.randrange(6)
    base = VALID.format(n=n, ca=rng.choice(['"file:key.pem"', '"file:fifo"', '"file:/dev/zero"', "null"]))
    if kind == 0:  # a valid file with one value replaced by a fragment
        lines = base.splitlines()
        i = rng.randrange(len(lines))
        key, sep, _ = lines[i].partition(":")
        lines[i] = f"{key}{sep} {rng.choice(FRAGMENTS)}" if sep else rng.choice(FRAGMENTS)
        return "\n".join(lines) + "\n"
    if kind == 1:  # an alias bomb, with or without a service around it
        return ("service: bomb\n" if rng.random() < 0.5 else "") + _laughs(rng.randrange(3, 10))
    if kind == 2:  # fragments glued together
        return "\n".join(f"k{i}: {rng.choice(FRAGMENTS)}" for i in range(rng.randrange(1, 8))) + "\n"
    if kind == 3:  # a valid file cut or with bytes flipped
        data = list(base)
        for _ in range(rng.randrange(1, 6)):
            data[rng.randrange(len(data))] = rng.choice("{}[]:&*!|>-'\"\n\t #%@`\0")
        return "".join(data[: rng.randrange(1, len(data) + 1)])
    if kind == 4:  # apps and gateway sections with odd values
        return (f"apps:\n  {rng.choice(['a', '[x]', '{y: 1}', '1', 'ok'])}: {{secret: {rng.choice(FRAGMENTS)!r}}}\n"
                f"gateway: {{client_idle: {rng.choice(['.nan', '-1', '0', '1s', '99999d', 'x'])}, "
                f"header_timeout: {rng.choice(['.inf', '500ms', '10s', '[1]'])}}}\n")
    return rng.choice(FRAGMENTS) * rng.randrange(1, 6)


def test_generated_rule_files_give_problems_never_tracebacks_or_hangs(tmp_path: Path) -> None:
    rng = random.Random(1811)
    (tmp_path / "key.pem").write_text("-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n")
    os.mkfifo(tmp_path / "fifo")
    crashes: list[str] = []
    slowest = 0.0
    total = 300
    for n in range(total):
        text = generate(rng, n)
        start = time.monotonic()
        try:
            load_sources([(f"fuzz{n}.yaml", text)], tmp_path, env={})
        except Exception as exc:  # what the test is looking for
            crashes.append(f"fuzz{n}.yaml: {type(exc).__name__}: {exc}"[:300])
        slowest = max(slowest, time.monotonic() - start)
    print(f"{total} generated rule files: {len(crashes)} tracebacks, slowest {slowest * 1000:.0f} ms")
    assert crashes == []
    assert slowest < 3.0


def test_check_command_on_generated_files(tmp_path: Path) -> None:
    """`python -m addons check` itself, on a directory of 60 generated files: problems, exit 1, no
    traceback, done in bounded time (a hang fails the timeout)."""
    rng = random.Random(7)
    rules = tmp_path / "rules"
    rules.mkdir()
    os.mkfifo(rules / "fifo")
    for n in range(60):
        (rules / f"fuzz{n}.yaml").write_text(generate(rng, n), errors="surrogateescape")
    os.mkfifo(rules / "pipe.yaml")  # a FIFO as a rule file: reported, never opened for a blocking read
    result = subprocess.run([sys.executable, "-m", "addons", "check", str(rules)], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert "Traceback" not in result.stdout + result.stderr, result.stderr[-3000:]
    assert result.returncode == 1
    assert f"{rules}/pipe.yaml:1: cannot read: not a regular file" in result.stdout
    problems = [line for line in result.stdout.splitlines() if line.startswith(str(rules))]
    assert problems and all(":" in p[len(str(rules)):] for p in problems)
