"""Loads `gateway_rules` into the running gateway, and reloads it on demand, all or nothing."""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp
from mitmproxy import ctx, exceptions

from addons.chain.context import GatewayContext
from addons.rules.loader import Problem, RuleSet, load_directory
from addons.rules.remote import Source
from addons.rules.schema import ServiceSpec
from addons.runtime import ServiceRuntime, compile_rules
from addons.state.base import StateStore
from addons.upstream.health import HealthRegistry, ServiceHealth, TargetHealth

log = logging.getLogger("gateway")

# Reading a rules directory is bounded (file size, nesting, alias expansion: see loader.py) and runs
# in a worker thread for every reload while serving; past this long it is reported as a problem.
RELOAD_TIME_LIMIT = 10.0


class CredentialContext:
    """What token credentials get from the gateway: `addons.credentials.services.TokenServices`."""

    def __init__(self, gw: GatewayContext, service: str = "_", upstream_url: str = "") -> None:
        self.gw = gw
        self.service = service
        self.upstream_url = upstream_url

    def for_service(self, spec: ServiceSpec) -> CredentialContext:
        return CredentialContext(self.gw, spec.service, spec.upstream.url)

    def store(self) -> StateStore | None:
        return self.gw.store

    def http(self) -> aiohttp.ClientSession:
        return self.gw.http()

    def add_secret(self, value: str) -> None:
        if self.gw.compiled is not None:
            self.gw.compiled.redactor.add_secret(value)

    def token_refreshed(self, result: str) -> None:
        self.gw.metrics.token_refreshed(self.service, result)


class Rules:
    def __init__(self, gw: GatewayContext) -> None:
        self.gw = gw
        self.remote_sources: list[Source] = []  # the documents from gateway_rules_url in force
        self._closing: set[asyncio.Task[None]] = set()  # runtimes dropped by a reload, closing
        self._reloading = asyncio.Lock()  # one threaded reload at a time, applied in order

    def load(self, loader) -> None:  # type: ignore[no-untyped-def]
        loader.add_option("gateway_rules", str, "rules", "Directory of the gateway's rule files (*.yaml, *.yml).")

    def configure(self, updated: set[str]) -> None:
        if "connection_strategy" in updated or "gateway_rules" in updated:
            if ctx.options.connection_strategy != "lazy":
                # Eager connects to the CONNECT target before a rule can route the call elsewhere.
                log.warning("gateway: connection_strategy=%s; setting it to lazy so calls can be routed "
                            "before any upstream connection is made", ctx.options.connection_strategy)
                ctx.options.update(connection_strategy="lazy")
        everywhere = ctx.options.listen_host in ("", "0.0.0.0", "::")
        if ("listen_host" in updated or "gateway_rules" in updated) and everywhere:
            # mitmproxy binds every interface by default; a gateway holding provider secrets should
            # listen where only its applications reach it (run_proxy.sh defaults to 127.0.0.1).
            log.warning("gateway: the proxy listens on all interfaces (listen_host=%r); set --listen-host "
                        "(GATEWAY_LISTEN) to the address applications use", ctx.options.listen_host)
        if "gateway_rules" in updated:
            problems = self.reload("start" if self.gw.compiled is None else "option")
            if problems and self.gw.compiled is None:
                raise exceptions.OptionsError(
                    "gateway: the rules do not load:\n" + "\n".join(str(p) for p in problems))

    def reload(self, reason: str = "reload", remote: list[Source] | None = None) -> list[Problem]:
        """Validate the whole directory plus the remote documents (`remote`, or those in force when
        None) and swap it in; on any problem keep the rules and the remote documents in force and
        report. Returns the problems (empty on success)."""
        directory = ctx.options.gateway_rules
        extra = self.remote_sources if remote is None else remote
        rules, problems = load_directory(directory, extra=extra)
        return self._finish(directory, rules, problems, reason, extra)

    async def reload_async(self, reason: str = "reload", remote: list[Source] | None = None) -> list[Problem]:
        """`reload` with the reading and validating done in a worker thread, so a large or hostile
        rule file never stalls the calls being served. The result is applied here, on the loop."""
        async with self._reloading:
            directory = ctx.options.gateway_rules
            extra = list(self.remote_sources if remote is None else remote)
            try:
                rules, problems = await asyncio.wait_for(
                    asyncio.to_thread(load_directory, directory, None, extra), RELOAD_TIME_LIMIT)
            except TimeoutError:
                rules, problems = RuleSet(), [Problem(directory, 0, f"reading the rules took longer than "
                                                                    f"{RELOAD_TIME_LIMIT:.0f} s")]
            return self._finish(directory, rules, problems, reason, extra)

    def _finish(self, directory: str, rules: RuleSet, problems: list[Problem], reason: str,
                remote: list[Source]) -> list[Problem]:
        self.gw.last_reload_at = time.time()
        if problems:
            self.gw.last_reload_error = [str(p) for p in problems]
            self.gw.metrics.reloaded("error")
            keeping = "" if self.gw.compiled is None else f"; keeping rules version {self.gw.compiled.rules.version}"
            log.error("gateway: rules in %s not loaded (%s)%s:\n  %s", directory, reason, keeping,
                      "\n  ".join(str(p) for p in problems))
            return problems
        self.remote_sources = list(remote)
        self.apply(rules, reason)
        return []

    def apply(self, rules: RuleSet, reason: str) -> None:
        previous = self.gw.compiled
        compiled, dropped = compile_rules(rules, previous, CredentialContext(self.gw))
        if self.gw.health is None:
            self.gw.health = HealthRegistry(self.gw.http(), on_change=self._health_changed)
        # Health state and probers outlive a reload when a service's targets and probes did not change.
        kept = self.gw.health.apply({name: rt.health for name, rt in compiled.services.items()})
        for name, health in kept.items():
            compiled.services[name].health = health
            health.ssl = compiled.services[name].ssl  # a kept prober follows a changed upstream.ca
        self.gw.compiled = compiled
        self.gw.last_reload_error = []
        self.gw.metrics.reloaded("success")
        self.gw.metrics.set_names(
            set(compiled.services) | set(rules.disabled),
            {f"{s}.{m}" for s, spec in rules.services.items() for m in spec.methods}
            | {f"{s}._" for s in list(rules.services) + list(rules.disabled)},
            set(rules.apps),
        )
        for name, runtime in compiled.services.items():
            for target in runtime.health.targets:
                self.gw.metrics.set_up(name, target.name, target.up)
        for listener in self.gw.on_rules_changed:
            listener(compiled)
        self._close_later(dropped)
        if previous is None or previous.rules.version != rules.version:
            log.info("gateway: rules version %s loaded (%s): %d service(s), %d app(s) from %d file(s)",
                     rules.version, reason, len(rules.services), len(rules.apps), len(rules.files))
        for name, disabled in rules.disabled.items():
            log.warning("gateway: service %s is disabled: %s (calls get -3001)", name, disabled.reason)
        for name, why in rules.disabled_apps.items():
            log.warning("gateway: app %s is disabled: %s", name, why)

    def _health_changed(self, health: ServiceHealth, target: TargetHealth, up: bool) -> None:
        self.gw.metrics.set_up(health.service, target.name, up)

    def _close_later(self, dropped: list[ServiceRuntime]) -> None:
        if not dropped:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        for runtime in dropped:
            task = loop.create_task(runtime.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
