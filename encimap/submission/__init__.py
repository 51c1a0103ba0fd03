"""Submission on port 2587: authenticated sending for MotorBlocks and vaultboxes.

`server` (aiosmtpd protocol with the port's TLS/AUTH rules), `handler` (per-session policy:
auth engine, sender ownership, hourly limit), `relay` (the upstream MTA, in step with the
client), `headers` (trace headers), `replies`, `service` (`start(runtime)`).
"""
