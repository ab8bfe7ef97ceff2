"""Reads a rules directory (or remote YAML documents) into a RuleSet, or into `file:line: message` problems.

The whole set is validated before anything is used: a reload either swaps in a complete, valid set
or changes nothing."""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from addons.identity.schema import AppSpec
from addons.rules.schema import AppsFile, GatewaySpec, ServiceSpec

# ${NAME} or ${NAME:-default}: the default lets a shipped rule point at a local fake in a demo.
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

PathKey = tuple[str | int, ...]

# Bounds on one rule file or remote document (SPEC 18): real rule files are a few KiB, a few levels
# deep, with a handful of values. Aliases are expanded while a document is built, so MAX_VALUES also
# stops an alias bomb ("billion laughs") and a recursive alias stops at MAX_DEPTH.
MAX_RULE_FILE_BYTES = 1024 * 1024
MAX_DEPTH = 64
MAX_VALUES = 300_000  # more than 1 MiB of YAML can hold without aliases
MAX_ALIASED_VALUES = 10_000  # values built by expanding aliases (shared blocks are small)


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


@dataclass(frozen=True)
class DisabledService:
    """A service whose rule references an unset variable: its hosts stay owned, calls get -3001."""

    name: str
    hosts: tuple[str, ...]
    reason: str
    file: str


@dataclass
class RuleSet:
    services: dict[str, ServiceSpec] = field(default_factory=dict)
    disabled: dict[str, DisabledService] = field(default_factory=dict)
    apps: dict[str, AppSpec] = field(default_factory=dict)
    disabled_apps: dict[str, str] = field(default_factory=dict)  # name -> reason
    gateway: GatewaySpec = field(default_factory=GatewaySpec)
    files: list[str] = field(default_factory=list)
    version: str = "empty"
    source_of: dict[str, str] = field(default_factory=dict)  # "service:x" / "app:y" -> file


@dataclass
class _Document:
    file: str
    data: Any
    lines: dict[PathKey, int]
    missing: dict[PathKey, list[str]]  # path -> unset variables used there


_QUOTED = re.compile(r""""(?:[^"\\\n]|\\.)*"|'(?:[^'\n]|'')*'|#[^\n]*""")
_BRACKET = re.compile(r"[\[\]{}]")


def _flow_depth_problem(text: str) -> int | None:
    """The line where `[`/`{` nesting passes MAX_DEPTH, or None. Checked before PyYAML sees the text:
    its scanner takes time quadratic in the nesting depth (a file of `[[[[...` never finishes)."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return None
    # Brackets inside quotes and comments do not nest: blanked out, same length, so positions hold.
    plain = _QUOTED.sub(lambda m: " " * len(m.group()), text)
    depth = 0
    for match in _BRACKET.finditer(plain):
        depth = depth + 1 if match.group() in "[{" else max(0, depth - 1)
        if depth > MAX_DEPTH:
            return text.count("\n", 0, match.start()) + 1
    return None


class _BadNode(Exception):
    """A document the loader refuses: reported as a problem at `line`."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line


class _DuplicateKey(_BadNode):
    def __init__(self, line: int, key: object) -> None:
        super().__init__(line, f"duplicate key {key!r}")


class _Budget:
    """Values built so far in one document (aliases count each time they are expanded)."""

    def __init__(self) -> None:
        self.values = 0
        self.aliased = 0
        self.seen: set[int] = set()  # nodes built once: meeting one again is an alias


def _substitute(value: str, env: Mapping[str, str], missing: list[str]) -> str:
    def repl(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env and env[name] != "":
            return env[name]
        if default is not None:
            return default
        missing.append(name)
        return ""

    return _ENV_REF.sub(repl, value) if "${" in value else value


def _build(loader: yaml.SafeLoader, node: yaml.Node, path: PathKey, doc: _Document,
           env: Mapping[str, str], budget: _Budget, aliased: bool = False) -> Any:
    line = node.start_mark.line + 1
    aliased = _spend(budget, node, line, path, aliased)
    doc.lines[path] = line
    if isinstance(node, yaml.MappingNode):
        return _build_mapping(loader, node, path, doc, env, budget, aliased)
    if isinstance(node, yaml.SequenceNode):
        return [_build(loader, item, (*path, i), doc, env, budget, aliased) for i, item in enumerate(node.value)]
    return _build_scalar(loader, node, line, path, doc, env)


def _spend(budget: _Budget, node: yaml.Node, line: int, path: PathKey, aliased: bool) -> bool:
    """Count one value against the document's limits; whether it is reached through an alias."""
    budget.values += 1
    if not aliased and id(node) in budget.seen:
        aliased = True
    budget.seen.add(id(node))
    if aliased:
        budget.aliased += 1
        if budget.aliased > MAX_ALIASED_VALUES:
            raise _BadNode(line, f"document too large: aliases expand to more than {MAX_ALIASED_VALUES} values")
    if budget.values > MAX_VALUES:
        raise _BadNode(line, f"document too large: more than {MAX_VALUES} values")
    if len(path) > MAX_DEPTH:
        raise _BadNode(line, f"nested deeper than {MAX_DEPTH} levels (a recursive alias?)")
    return aliased


def _build_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, path: PathKey, doc: _Document,
                   env: Mapping[str, str], budget: _Budget, aliased: bool) -> dict[Any, Any]:
    result: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            raise _BadNode(key_node.start_mark.line + 1, "a key must be a plain value, not a list or mapping")
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, bool):
            key = key_node.value  # YAML 1.1 reads a key `on:` as True; retry.on means the word
        if isinstance(key, str):
            key = _substitute(key, env, [])
        if key in result:
            raise _DuplicateKey(key_node.start_mark.line + 1, key)
        result[key] = _build(loader, value_node, (*path, key), doc, env, budget, aliased)
    return result


def _build_scalar(loader: yaml.SafeLoader, node: yaml.Node, line: int, path: PathKey, doc: _Document,
                  env: Mapping[str, str]) -> Any:
    value = loader.construct_object(node, deep=True)
    if isinstance(value, bool) and isinstance(node, yaml.ScalarNode) and node.value.lower() not in ("true", "false"):
        # YAML 1.1 reads on/off/yes/no as booleans: a service named `off` must stay a name. Boolean
        # fields still accept these words (the schema parses them).
        value = node.value
    if isinstance(value, str):
        if "\0" in value:
            raise _BadNode(line, "a value holds a NUL character")
        missing: list[str] = []
        value = _substitute(value, env, missing)
        if missing:
            doc.missing[path] = missing
    return value


def parse_documents(file: str, text: str, env: Mapping[str, str]) -> tuple[list[_Document], list[Problem]]:
    """YAML text to documents with a line for every path. Several documents are allowed (remote feeds)."""
    docs: list[_Document] = []
    if len(text) > MAX_RULE_FILE_BYTES:
        return [], [Problem(file, 1, f"rule file larger than {MAX_RULE_FILE_BYTES // 1024} KiB")]
    if "\0" in text:
        return [], [Problem(file, text.count("\n", 0, text.index("\0")) + 1, "a NUL character in a rule file")]
    deep = _flow_depth_problem(text)
    if deep is not None:
        return [], [Problem(file, deep, f"nested deeper than {MAX_DEPTH} levels")]
    loader = yaml.SafeLoader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            doc = _Document(file, None, {}, {})
            doc.data = _build(loader, node, (), doc, env, _Budget())
            docs.append(doc)
    except _BadNode as exc:
        return [], [Problem(file, exc.line, str(exc))]
    except RecursionError:
        # PyYAML composes nested collections recursively: a document nested hundreds deep.
        return [], [Problem(file, loader.line + 1, f"nested deeper than {MAX_DEPTH} levels")]
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        return [], [Problem(file, line, f"invalid YAML: {exc.problem or exc}")]
    except yaml.YAMLError as exc:
        return [], [Problem(file, 1, f"invalid YAML: {exc}")]
    except (ValueError, TypeError, OverflowError) as exc:
        # A scalar PyYAML cannot construct (an int of 5000 digits, a date like 2024-13-45).
        return [], [Problem(file, loader.line + 1, f"invalid value: {type(exc).__name__}")]
    finally:
        loader.dispose()
    return docs, []


def _line_of(doc: _Document, loc: Iterable[str | int]) -> tuple[int, list[str | int]]:
    """The line of the deepest rule-file path named by a pydantic error location.

    Pydantic locations contain union tags ('static', 'function-after[...]') that are not keys in
    the file; they are skipped."""
    path: PathKey = ()
    shown: list[str | int] = []
    for part in loc:
        candidate = (*path, part)
        if candidate in doc.lines:
            path = candidate
            shown.append(part)
    return doc.lines.get(path, 1), shown


def _validation_problems(doc: _Document, exc: ValidationError, ignore: set[PathKey],
                         label: PathKey = ()) -> list[Problem]:
    problems = []
    for error in exc.errors(include_url=False):
        line, shown = _line_of(doc, error["loc"])
        if any(tuple(shown[: len(p)]) == p for p in ignore):
            continue  # caused by an unset ${VAR}: reported as the reason the service is disabled
        where = ".".join(str(p) for p in (*label, *shown))
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key (check the spelling against the rule-file reference)"
        elif error["type"] == "missing":
            where = ".".join(str(p) for p in (*label, *error["loc"])
                             if isinstance(p, int) or not p.startswith("function"))
            message = "required key is missing"
        problems.append(Problem(doc.file, line, f"{where}: {message}" if where else message))
    return problems


def _missing_reason(doc: _Document, prefix: PathKey = ()) -> tuple[str, set[PathKey]]:
    paths = {p for p in doc.missing if p[: len(prefix)] == prefix}
    names = sorted({name for p in paths for name in doc.missing[p]})
    where = sorted(".".join(str(x) for x in p[len(prefix):]) for p in paths)
    noun = "variable" if len(names) == 1 else "variables"
    reason = f"environment {noun} {', '.join(names)} not set (used in {', '.join(where)})"
    return reason, paths


def _validate(model: type[BaseModel], doc: _Document, data: Any, base_dir: Path,
              prefix: PathKey = ()) -> tuple[Any, list[Problem]]:
    try:
        return model.model_validate(data, context={"base_dir": str(base_dir)}), []
    except ValidationError as exc:
        sub = _Document(doc.file, data, {p[len(prefix):]: n for p, n in doc.lines.items()
                                         if p[: len(prefix)] == prefix}, {})
        ignore = {p[len(prefix):] for p in doc.missing if p[: len(prefix)] == prefix}
        return None, _validation_problems(sub, exc, ignore, prefix)


class _Collector:
    def __init__(self, base_dir: Path) -> None:
        self.base_dir = base_dir
        self.rules = RuleSet()
        self.problems: list[Problem] = []
        self.gateway_file: str | None = None
        self.host_owner: dict[str, tuple[str, str]] = {}  # host -> (service, file)

    def add(self, doc: _Document) -> None:
        data = doc.data
        if data is None:
            return  # an empty file or document
        if not isinstance(data, dict):
            self.problems.append(Problem(doc.file, doc.lines.get((), 1),
                                         "a rule file is a mapping with 'service:', or 'apps:' and/or 'gateway:'"))
        elif "service" in data:
            self._add_service(doc, data)
        elif "apps" in data or "gateway" in data:
            self._add_apps(doc, data)
        else:
            self.problems.append(Problem(doc.file, doc.lines.get((), 1),
                                         "a rule file holds 'service:' (one service) or 'apps:' and/or 'gateway:'"))

    def _claim(self, doc: _Document, name: str, hosts: Iterable[str]) -> bool:
        key = f"service:{name}"
        if key in self.rules.source_of:
            self.problems.append(Problem(doc.file, doc.lines.get(("service",), 1),
                                         f"service {name!r} is already defined in {self.rules.source_of[key]}"))
            return False
        for host in hosts:
            if host in self.host_owner and self.host_owner[host][0] != name:
                other, file = self.host_owner[host]
                self.problems.append(Problem(doc.file, doc.lines.get(("hosts",), doc.lines.get((), 1)),
                                             f"host {host!r} already belongs to service {other!r} ({file})"))
                return False
        for host in hosts:
            self.host_owner[host] = (name, doc.file)
        self.rules.source_of[key] = doc.file
        return True

    def _add_service(self, doc: _Document, data: dict[str, Any]) -> None:
        spec, problems = _validate(ServiceSpec, doc, data, self.base_dir)
        name = data.get("service")
        if problems:
            self.problems.extend(problems)
            return
        if doc.missing:
            reason, _ = _missing_reason(doc)
            hosts = tuple(spec.hosts) if spec is not None else _fallback_hosts(data)
            if not isinstance(name, str) or not name:
                self.problems.append(Problem(doc.file, doc.lines.get(("service",), 1), f"service name: {reason}"))
                return
            if self._claim(doc, name, hosts):
                self.rules.disabled[name] = DisabledService(name, hosts, reason, doc.file)
            return
        assert spec is not None
        if self._claim(doc, spec.service, spec.hosts):
            self.rules.services[spec.service] = spec

    def _add_apps(self, doc: _Document, data: dict[str, Any]) -> None:
        apps = data.get("apps") or {}
        gateway = data.get("gateway")
        extra = {k: v for k, v in data.items() if k not in ("apps", "gateway")}
        _, problems = _validate(AppsFile, doc, {**extra, "gateway": gateway}, self.base_dir)
        self.problems.extend(problems)
        if not isinstance(apps, dict):
            self.problems.append(Problem(doc.file, doc.lines.get(("apps",), 1), "apps: must be a mapping of app names"))
            apps = {}
        if gateway is not None and not problems:
            if self.gateway_file is not None:
                self.problems.append(Problem(doc.file, doc.lines.get(("gateway",), 1),
                                             f"'gateway:' is already set in {self.gateway_file}"))
            else:
                self.gateway_file = doc.file
                self.rules.gateway = GatewaySpec.model_validate(gateway)
        for name, app_data in apps.items():
            prefix: PathKey = ("apps", name)
            key = f"app:{name}"
            if key in self.rules.source_of:
                self.problems.append(Problem(doc.file, doc.lines.get(prefix, 1),
                                             f"app {name!r} is already defined in {self.rules.source_of[key]}"))
                continue
            spec, app_problems = _validate(AppSpec, doc, app_data, self.base_dir, prefix)
            if not isinstance(name, str) or not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", name):
                app_problems.append(Problem(doc.file, doc.lines.get(prefix, 1), f"app name {name!r} is not valid"))
            if app_problems:
                self.problems.extend(app_problems)
                continue
            self.rules.source_of[key] = doc.file
            if any(p[: len(prefix)] == prefix for p in doc.missing):
                self.rules.disabled_apps[name] = _missing_reason(doc, prefix)[0]
            elif spec is not None and spec.secret is not None and not spec.secret.get_secret_value().strip():
                # Anyone could sign as an app with an empty HMAC key: disabled like an unset secret.
                self.rules.disabled_apps[name] = "its secret is empty"
            elif spec is not None:
                self.rules.apps[name] = spec


def _fallback_hosts(data: dict[str, Any]) -> tuple[str, ...]:
    hosts = data.get("hosts")
    if isinstance(hosts, list) and all(isinstance(h, str) and h for h in hosts):
        return tuple(h.lower() for h in hosts)
    url = (data.get("upstream") or {}).get("url") if isinstance(data.get("upstream"), dict) else None
    if isinstance(url, str):
        from urllib.parse import urlsplit

        host = urlsplit(url).hostname
        if host:
            return (host,)
    return ()


def _read_rule_file(file: Path) -> str:
    """A rule file's text, at most MAX_RULE_FILE_BYTES (a larger one is refused, not read whole)."""
    # O_NONBLOCK and the check after opening: a FIFO swapped in after the listing must not block.
    fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK)
    with open(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("not a regular file")
        data = handle.read(MAX_RULE_FILE_BYTES + 1)
    if len(data) > MAX_RULE_FILE_BYTES:
        raise ValueError(f"larger than {MAX_RULE_FILE_BYTES // 1024} KiB")
    return data.decode("utf-8")


def rule_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file()
                  and not p.name.startswith("."))


def load_sources(sources: list[tuple[str, str]], base_dir: Path,
                 env: Mapping[str, str] | None = None) -> tuple[RuleSet, list[Problem]]:
    """Validate every (file name, YAML text) together. Problems non-empty means: do not use the set."""
    env = os.environ if env is None else env
    collector = _Collector(base_dir)
    digest = hashlib.sha256()
    for name, text in sources:
        digest.update(name.encode() + b"\0" + text.encode() + b"\0")
        docs, problems = parse_documents(name, text, env)
        if not problems and not any(doc.data is not None for doc in docs):
            # An empty file is far more often a file caught mid-write (editors and `cat >` truncate
            # first) than an intent to remove everything it held: refuse it, keep the rules in force.
            problems = [Problem(name, 1, "rule file is empty (rename it to *.disabled to switch it off)")]
        collector.problems.extend(problems)
        for doc in docs:
            try:
                collector.add(doc)
            except Exception as exc:  # a value the schema's checks did not foresee: a problem, not a crash
                collector.problems.append(Problem(doc.file, doc.lines.get((), 1),
                                                  f"cannot be read: {type(exc).__name__}"))
        collector.rules.files.append(name)
    rules = collector.rules
    rules.version = digest.hexdigest()[:12] if sources else "empty"
    return rules, collector.problems


def load_directory(directory: str | Path, env: Mapping[str, str] | None = None,
                   extra: list[tuple[str, str]] | None = None) -> tuple[RuleSet, list[Problem]]:
    """Every *.yaml / *.yml of `directory` (plus `extra` sources, e.g. remote documents)."""
    path = Path(directory)
    if not path.is_dir():
        return RuleSet(), [Problem(str(path), 0, "rules directory does not exist")]
    sources: list[tuple[str, str]] = []
    problems: list[Problem] = []
    for file in sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and not p.name.startswith(".")
                       and p.exists() and not p.is_file() and not p.is_dir()):
        problems.append(Problem(str(file), 1, "cannot read: not a regular file (a FIFO or device?)"))
    for file in rule_files(path):
        try:
            sources.append((str(file), _read_rule_file(file)))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            problems.append(Problem(str(file), 1, f"cannot read: {getattr(exc, 'strerror', None) or exc}"))
    rules, more = load_sources(sources + (extra or []), path, env)
    return rules, problems + more
