"""The streaming service: wire format, transports (Redis / in memory), worker, report, scenarios."""
