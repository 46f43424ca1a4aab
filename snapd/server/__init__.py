"""The daemon: gRPC service over the snapshot engine, its lifecycle, configuration and logs.

Modules: config (TOML + env + flags), daemon (socket, locks, signals, systemd notify and
watchdog, shutdown), service (the RPC handlers), convert (engine objects <-> messages),
errors (the one place where exceptions become gRPC statuses), logs, notify (sd_notify),
workspaces (the open-workspace registry), testing (start a daemon subprocess from tests and
benchmarks).
"""
