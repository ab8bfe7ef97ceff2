"""Identity (SPEC 7): the `apps:` schema (schema.py), the directory of a rule set's apps
(directory.py: Basic credentials, client addresses, signatures, `allow`), and signed requests
(signed.py). The chain step is addons/chain/identify.py."""

from addons.identity.signed import sign

# `addons.identity.sign` is the documented way for a Python client to sign a request (README).
__all__ = ["sign"]
