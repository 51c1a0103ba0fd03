"""The one decision engine for every login on the host (SMTP submission, IMAP, auth socket)."""
