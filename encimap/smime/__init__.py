"""S/MIME engine: encrypt inbound mail to a mailbox's certificates, check and make certificates.

A pure library (no I/O besides what callers pass in). The server never holds private keys, so
there is deliberately no decryption here; tests decrypt with the openssl command.
"""

from encimap.smime.certificates import (
    CertificateInfo,
    check_certificate,
    email_addresses,
    export_pkcs12,
    fingerprint,
    generate_certificate,
    load_certificate,
    usable_certificates,
)
from encimap.smime.cms import Profile, profile_of
from encimap.smime.encrypt import EncryptionResult, encrypt_message
from encimap.smime.errors import CertificateError, NoUsableCertificate, SMIMEError

__all__ = [
    "CertificateError",
    "CertificateInfo",
    "EncryptionResult",
    "NoUsableCertificate",
    "Profile",
    "SMIMEError",
    "check_certificate",
    "email_addresses",
    "encrypt_message",
    "export_pkcs12",
    "fingerprint",
    "generate_certificate",
    "load_certificate",
    "profile_of",
    "usable_certificates",
]
