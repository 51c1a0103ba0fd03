"""The S/MIME intake: LMTP/SMTP delivery of inbound mail into encrypted vaultboxes.

`service.start` wires it (listeners, workers); `handler` holds the MAIL/RCPT/DATA policy,
`recipients` the RCPT checks, `delivery` encryption and storage, `server` aiosmtpd's protocols
with draining, `replies` every reply, `trace` the headers added before encryption.
"""
