"""Egress API gateway: a mitmproxy addon chain (see addons/gateway.py) and its pure parts."""
