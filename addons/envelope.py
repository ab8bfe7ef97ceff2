"""Envelope adapters (SPEC 5): read a provider's answer, decide its gateway code, render the envelope."""
# Interface (implementation in progress):
#   ProviderAnswer(status, headers, body)  -> adapter.classify(answer, rule) -> Verdict(code, message, data, detail, provider_code)
#   make_adapter(spec) ; render(code, message, data, request_id) -> bytes
