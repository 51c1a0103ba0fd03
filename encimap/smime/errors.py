"""Errors of the S/MIME engine; the message of each is a reason fit for an operator or a log."""


class SMIMEError(Exception):
    """Base of every error the S/MIME engine raises."""


class CertificateError(SMIMEError):
    """A certificate cannot be used to encrypt mail to an address; str() says why."""


class NoUsableCertificate(SMIMEError):
    """There is no certificate to encrypt to, so the message cannot be stored."""
