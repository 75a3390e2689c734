"""Shared runtime: devices and threads, checkpoints with model cards, the fast inference path, safe file writes, parsers."""
