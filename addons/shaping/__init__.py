"""Shaping (SPEC 14): calls over a quota wait for room instead of failing, fairly across apps, and
the provider's own quota, learned from its answers, stops the fleet until the reset it named.

Pure parts only (no mitmproxy): the rule schema, the fair queue, the provider-quota parser and
learner. The glue is `addons/chain/shaping.py`."""
