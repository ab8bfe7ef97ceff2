"""WeChat Pay API v3 (SPEC 17): the credential spec, the request signer and the answer verifier."""

from addons.signing.wechatpay_v3.schema import WechatPayV3Credentials
from addons.signing.wechatpay_v3.signer import WechatPayV3Signer

__all__ = ["WechatPayV3Credentials", "WechatPayV3Signer"]
