"""The Dovecot-protocol auth socket (Postfix `smtpd_sasl_type = dovecot`) and the nginx mail
`auth_http` endpoint, both answering from the one auth engine."""
