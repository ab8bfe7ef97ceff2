"""Quotas (SPEC 8): the `quota:` schema (schema.py), which quotas apply to a call and the headers
that tell the caller about them (policy.py), and the per-rule-set table of them (table.py). The
counting is the state store's (addons/state/); the chain step is addons/chain/quota.py."""
