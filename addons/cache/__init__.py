"""The response cache (SPEC 13): its rule schema, keys, policy, single flight and stores.

Pure: nothing here imports mitmproxy. The glue (where a call looks up and stores, the
`X-Gateway-Cache` header, the admin purge, metrics) is `addons/chain/cache.py`."""
