"""IMAP4rev1 server over the stored encrypted mail (issue #7): `parser`/`wire` are the pure
codec, `session` the connection and state machine, `commands/` the handlers by group,
`service` the listeners."""
