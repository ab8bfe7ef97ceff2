"""What a provider echoes back never carries a secret the gateway injected (SPEC 12): the answer to
the caller, raw or enveloped, has every known secret value (static keys, fetched tokens, app
secrets, signing secrets) masked before the caller or a stored flow (mitmweb, `-w`) sees it."""

from __future__ import annotations

from mitmproxy import http

from addons.limits import MAX_BODY
from addons.redact import Redactor
from addons.upstream import decompress


def mask_echoed_secrets(response: http.Response, redactor: Redactor) -> None:
    for name, value in list(response.headers.items(multi=True)):
        masked = redactor.known_bytes(value.encode("utf-8", "surrogateescape")).decode("utf-8", "surrogateescape")
        if masked != value:
            values = [redactor.known_bytes(v.encode("utf-8", "surrogateescape")).decode("utf-8", "surrogateescape")
                      for v in response.headers.get_all(name)]
            response.headers.set_all(name, values)
    raw = response.raw_content
    if not raw:
        return
    if "content-encoding" not in response.headers:
        masked_body = redactor.known_bytes(raw)
        if masked_body is not raw:
            response.raw_content = masked_body
            response.headers["Content-Length"] = str(len(masked_body))
        return
    # A raw answer kept its encoding (gzip, br): look inside, and re-encode only if something changed.
    try:
        # The project's bounded decoder (64 MiB), not mitmproxy's, which inflates without a limit.
        decoded = decompress.decode(raw, response.headers.get("content-encoding", ""), MAX_BODY)
    except ValueError:
        response.raw_content = b""  # cannot be looked into: it is not handed on unchecked
        response.headers["Content-Length"] = "0"
        return
    masked_body = redactor.known_bytes(decoded)
    if masked_body is not decoded:
        response.content = masked_body  # re-encoded with the answer's content-encoding
        response.headers["Content-Length"] = str(len(response.raw_content or b""))
