"""The `wechatpay_v3` envelope adapter (SPEC 17): WeChat Pay API v3 answers.

A 2xx answer is success: `data` is the JSON body, `null` when there is none (204 No Content, as for
closing an order). An error answer is `{"code": "PARAM_ERROR", "message": "...", "detail": {...}}`
with an HTTP status; its `code` decides where SPEC 17 names it (SIGN_ERROR -1002, PARAM_ERROR and
INVALID_REQUEST -2005, FREQUENCY_LIMITED -1005, SYSTEM_ERROR -1003), the HTTP status (SPEC 5)
otherwise. The caller's message names WeChat Pay's `code` but never repeats its words (SPEC 5); the
whole error, `message` and `detail` included, goes to the log.
"""

from __future__ import annotations

import json
from typing import Any

from addons.envelope.base import (
    ProviderAnswer,
    Unreadable,
    Verdict,
    _Base,
    _clip,
    _json,
    _snippet,
    _success,
    sentence,
)
from addons.errors import Code


class WechatPayV3Adapter(_Base):
    CODES: dict[str, int] = {
        "SIGN_ERROR": Code.UPSTREAM_AUTH,
        "PARAM_ERROR": Code.CALLER_INVALID,
        "INVALID_REQUEST": Code.CALLER_INVALID,
        "FREQUENCY_LIMITED": Code.UPSTREAM_RATE_LIMITED,
        "SYSTEM_ERROR": Code.UPSTREAM_UNAVAILABLE,
    }

    def classify(self, answer: ProviderAnswer, rule: str) -> Verdict:
        verdict = super().classify(answer, rule)
        try:
            status = int(answer.status)
        except (TypeError, ValueError):
            return verdict
        if 300 <= status < 400:
            # The API never redirects; a redirect comes from something in front of it.
            code = Code.UPSTREAM_ERROR
            return Verdict(code, sentence(rule, code, f" (HTTP {status})"), None, f"HTTP {status}")
        if 200 <= status < 300 or verdict.provider_code is None:
            return verdict
        judged: int = self.CODES.get(verdict.provider_code, verdict.code)
        suffix = f" (HTTP {status}, code {_clip(verdict.provider_code, 80)})"
        return Verdict(judged, sentence(rule, judged, suffix), None, verdict.detail, verdict.provider_code)

    def _body(self, answer: ProviderAnswer, rule: str) -> Verdict:
        if not answer.body.strip():
            return _success(None)
        return _success(_json(answer))

    def _error_detail(self, answer: ProviderAnswer) -> tuple[str, str | None]:
        body = self._error_body(answer)
        if body is None:
            return (_snippet(answer.body), None) if answer.body else ("", None)
        detail = f"code={body['code']} message={body.get('message', '')}"
        if body.get("detail") not in (None, "", {}):
            detail += " detail=" + json.dumps(body["detail"], ensure_ascii=False, default=str)
        return _clip(detail), body["code"]

    @staticmethod
    def _error_body(answer: ProviderAnswer) -> dict[str, Any] | None:
        if not answer.body.strip():
            return None
        try:
            body = _json(answer)
        except (Unreadable, RecursionError):
            return None
        if not isinstance(body, dict) or not isinstance(body.get("code"), str) or not body["code"]:
            return None
        return body


__all__ = ["WechatPayV3Adapter"]
