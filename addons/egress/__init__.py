"""Egress control (SPEC 12): which addresses pass-through traffic may connect to. Pure: no mitmproxy."""
