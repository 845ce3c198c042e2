"""The test suite; it mirrors the source tree, shared helpers in `support`."""
