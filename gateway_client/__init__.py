"""The client for new code (SPEC 16): call a provider by service and method name through the gateway.

    from gateway_client import gateway_call, GatewayError
    user = gateway_call("wechat", "user_info", {"openid": "o6_b..."})

Configuration from the environment, overridden by keyword arguments: `GATEWAY_PROXY`
(`http://gw.internal:8080`), `GATEWAY_APP`, `GATEWAY_APP_SECRET`. Calls are signed requests through
the explicit form `http://gateway.local/<service>/<method>`; the gateway fills the method's path
template from `params` and sends the rest as the query or the JSON body, as the method needs."""

from gateway_client.client import (
    CallerError,
    GatewayError,
    GatewayFault,
    ProviderError,
    agateway_call,
    gateway_call,
)

__all__ = ["CallerError", "GatewayError", "GatewayFault", "ProviderError", "agateway_call", "gateway_call"]
