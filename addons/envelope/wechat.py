"""The `wechat` envelope adapter (SPEC 5): WeChat's `{"errcode": N, "errmsg": "..."}` answers."""

from __future__ import annotations

from addons.envelope.base import ProviderAnswer, Unreadable, Verdict, _Base, _clip, _json_object, _success, sentence
from addons.errors import Code


class WechatAdapter(_Base):
    """`wechat`: `errcode` 0 or absent is success; `data` is the body without `errcode`/`errmsg`."""

    AUTH = frozenset({40001, 40014, 42001, 41001})  # invalid, malformed, expired, missing access_token
    RATE = frozenset({45009, 45011})  # daily API quota reached, API called too often
    BUSY = frozenset({-1})  # system busy

    def _body(self, answer: ProviderAnswer, rule: str) -> Verdict:
        body = _json_object(answer)
        raw_code = body.get("errcode", 0)
        if raw_code is None:
            raw_code = 0
        if isinstance(raw_code, bool) or not isinstance(raw_code, int | str):
            raise Unreadable("errcode is not a number", f"errcode={raw_code!r}")
        try:
            errcode = int(raw_code)
        except ValueError:
            raise Unreadable("errcode is not a number", f"errcode={raw_code!r}") from None
        if errcode == 0:
            return _success({k: v for k, v in body.items() if k != "errcode" and k != "errmsg"})
        if errcode in self.AUTH:
            code = Code.UPSTREAM_AUTH
        elif errcode in self.RATE:
            code = Code.UPSTREAM_RATE_LIMITED
        elif errcode in self.BUSY:
            code = Code.UPSTREAM_UNAVAILABLE
        else:
            code = Code.CALLER_INVALID
        return Verdict(int(code), sentence(rule, code, f" (errcode {errcode})"), None,
                       _clip(f"errcode={errcode} errmsg={body.get('errmsg', '')}"), str(errcode))

