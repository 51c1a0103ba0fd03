"""encimap: S/MIME-encrypting mail intake, unified SMTP/IMAP auth and IMAP access."""

__version__ = "0.1.0"
