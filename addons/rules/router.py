"""Which service and method a call is (SPEC 4), compiled once per rule set; `match` runs per call."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit

from addons.errors import Code, GatewayError
from addons.rules.loader import DisabledService, RuleSet
from addons.rules.schema import MethodSpec, ServiceSpec

_TEMPLATE_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_TEMPLATE_SPLIT = re.compile(r"(\{[A-Za-z_][A-Za-z0-9_]*\})")
UNMATCHED = "_"


@dataclass(frozen=True)
class Route:
    service: str
    method: str  # the method's name, or "_" for a service-level call
    spec: ServiceSpec | None  # None: the service is disabled
    method_spec: MethodSpec | None
    path: str  # path below the service's base path, as it goes upstream
    consumed: frozenset[str] = frozenset()  # query parameters that filled a path template
    disabled: DisabledService | None = None
    named_host: str = ""  # the caller's host when a wildcard entry matched it: the provider sees it

    @property
    def name(self) -> str:
        return f"{self.service}.{self.method}"


@dataclass
class _Template:
    regex: re.Pattern[str]
    http_method: str | None
    name: str
    params: tuple[str, ...]
    literal_chars: int  # more literal text wins when two templates match


@dataclass
class _ServiceIndex:
    name: str
    spec: ServiceSpec | None
    disabled: DisabledService | None
    base_path: str = ""
    literals: dict[str, list[tuple[str | None, str]]] = field(default_factory=dict)
    templates: list[_Template] = field(default_factory=list)

    def find(self, path: str, http_method: str) -> tuple[str, MethodSpec | None]:
        for wanted, name in self.literals.get(path, ()):
            if wanted is None or wanted == http_method:
                return name, self.spec.methods[name] if self.spec else None
        for template in self.templates:
            if (template.http_method is None or template.http_method == http_method) and template.regex.match(path):
                return template.name, self.spec.methods[template.name] if self.spec else None
        return UNMATCHED, None


def _compile_service(spec: ServiceSpec) -> _ServiceIndex:
    index = _ServiceIndex(spec.service, spec, None, urlsplit(spec.upstream.url).path.rstrip("/"))
    for name, method in spec.methods.items():
        params = tuple(_TEMPLATE_PARAM.findall(method.path))
        if not params:
            index.literals.setdefault(method.path, []).append((method.method, name))
            continue
        pattern = "".join(
            f"(?P<{part[1:-1]}>[^/]+)" if _TEMPLATE_PARAM.fullmatch(part) else re.escape(part)
            for part in _TEMPLATE_SPLIT.split(method.path)
        )
        literal = len(_TEMPLATE_PARAM.sub("", method.path))
        index.templates.append(_Template(re.compile(f"^{pattern}$"), method.method, name, params, literal))
    # A method-specific entry before an any-method one; longer literal text first.
    for entries in index.literals.values():
        entries.sort(key=lambda e: e[0] is None)
    index.templates.sort(key=lambda t: (-t.literal_chars, t.http_method is None))
    return index


class Router:
    def __init__(self, rules: RuleSet) -> None:
        self.services: dict[str, _ServiceIndex] = {}
        self.hosts: dict[str, _ServiceIndex] = {}
        self.wildcards: list[tuple[str, _ServiceIndex]] = []  # "*.example.com" -> suffix ".example.com"
        for spec in rules.services.values():
            self._add(_compile_service(spec), spec.hosts)
        for disabled in rules.disabled.values():
            self._add(_ServiceIndex(disabled.name, None, disabled), disabled.hosts)

    def _add(self, index: _ServiceIndex, hosts: list[str] | tuple[str, ...]) -> None:
        self.services[index.name] = index
        for host in hosts:
            if host.startswith("*."):
                self.wildcards.append((host[1:], index))
            else:
                self.hosts[host] = index

    def owner(self, host: str) -> _ServiceIndex | None:
        host = host.lower().rstrip(".")
        index = self.hosts.get(host)
        if index is None and self.wildcards:
            for suffix, candidate in self.wildcards:
                if host.endswith(suffix):
                    return candidate
        return index

    def wildcard_match(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        return host not in self.hosts and any(host.endswith(suffix) for suffix, _ in self.wildcards)

    def match(self, host: str, path: str, http_method: str) -> Route | None:
        """Transparent call: None when no service owns the host."""
        index = self.owner(host)
        if index is None:
            return None
        path = path.split("?", 1)[0] or "/"
        if index.base_path and (path == index.base_path or path.startswith(index.base_path + "/")):
            path = path[len(index.base_path):] or "/"
        name, method_spec = index.find(path, http_method)
        named = host.lower().rstrip(".") if self.wildcards and self.wildcard_match(host) else ""
        return Route(index.name, name, index.spec, method_spec, path, disabled=index.disabled, named_host=named)

    def explicit(self, service: str, method: str, query: dict[str, str]) -> Route:
        """`http://gateway.local/<service>/<method>`: the method's path, templates filled from `query`
        (the query parameters and, for a JSON object body, its top-level fields)."""
        index = self.services.get(service)
        if index is None:
            raise GatewayError(Code.CALLER_INVALID, f"no such service {service!r}")
        if index.spec is None:
            return Route(service, method, None, None, "/", disabled=index.disabled)
        method_spec = index.spec.methods.get(method)
        if method_spec is None:
            raise GatewayError(Code.CALLER_INVALID, f"{service}: no such method {method!r}")
        consumed = set()

        def fill(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in query:
                raise GatewayError(Code.CALLER_INVALID, f"{service}.{method}: parameter {name!r} is required")
            consumed.add(name)
            return quote(query[name], safe="")

        path = _TEMPLATE_PARAM.sub(fill, method_spec.path)
        return Route(service, method, index.spec, method_spec, path, frozenset(consumed))
