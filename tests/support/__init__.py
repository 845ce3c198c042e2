"""Helpers shared by the tests: tiny releases, ComfyUI servers and workflows, parity cases."""
