"""The long-running daemon: settings, loop, metrics, health, lifecycle."""
