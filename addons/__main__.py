"""`python -m addons check [DIR]`: validate a rules directory offline, like `nginx -t`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from addons.rules.loader import load_directory


def check(directory: str) -> int:
    rules, problems = load_directory(directory)
    for problem in problems:
        print(problem)
    for name, service in sorted(rules.disabled.items()):
        print(f"{service.file}: warning: service {name!r} will be disabled: {service.reason}")
    for name, reason in sorted(rules.disabled_apps.items()):
        print(f"{rules.source_of.get('app:' + name, directory)}: warning: app {name!r} will be disabled: {reason}")
    if problems:
        print(f"{directory}: {len(problems)} problem(s); the gateway would keep its previous rules", file=sys.stderr)
        return 1
    print(f"{directory}: ok: {len(rules.services)} service(s), {len(rules.disabled)} disabled, "
          f"{len(rules.apps)} app(s), {len(rules.files)} file(s), version {rules.version}")
    return 0


def default_rules() -> str:
    """GATEWAY_RULES, else ./rules, else the project's own rules/ (so it works from any directory)."""
    if os.environ.get("GATEWAY_RULES"):
        return os.environ["GATEWAY_RULES"]
    if Path("rules").is_dir():
        return "rules"
    return str(Path(__file__).resolve().parent.parent / "rules")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m addons", description="Egress gateway tools.")
    sub = parser.add_subparsers(dest="command", required=True)
    check_parser = sub.add_parser("check", help="validate a rules directory; exit 1 on any problem")
    check_parser.add_argument("directory", nargs="?", default=None,
                              help="rules directory (default: $GATEWAY_RULES, ./rules, the project's rules/)")
    args = parser.parse_args(argv)
    if args.command == "check":
        directory = args.directory or default_rules()
        if not Path(directory).is_dir():
            print(f"{directory}: no such rules directory", file=sys.stderr)
            return 1
        return check(directory)
    return 2


if __name__ == "__main__":
    sys.exit(main())
