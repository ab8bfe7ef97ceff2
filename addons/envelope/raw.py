"""The `raw` envelope adapter (SPEC 5): the provider's body goes to the caller untouched."""

from __future__ import annotations

import json

from addons.envelope.base import ProviderAnswer, Verdict, _Base, _snippet, _success


class RawAdapter(_Base):
    """`raw`: the body is the caller's, untouched (`data` is the body bytes); the verdict only says
    success or failure from the HTTP status, for the log, metrics and retries."""

    def _body(self, answer: ProviderAnswer, rule: str) -> Verdict:
        verdict = _success(answer.body)
        # The body stays the caller's, but a WeChat token error inside it must still let the gateway
        # refresh its token (40001/40014/42001): note the provider's code when there is one.
        if b'"errcode"' in answer.body[:256]:
            try:
                code = json.loads(answer.body).get("errcode")
            except (ValueError, AttributeError):
                code = None
            if isinstance(code, int) and code != 0:
                verdict.provider_code = str(code)
        return verdict

    def _error_detail(self, answer: ProviderAnswer) -> tuple[str, str | None]:
        return (_snippet(answer.body), None) if answer.body else ("", None)

