"""Offline commands: replay, evaluate, simulate, bench, demo."""
