"""Local delivery, shared by the front ends that store mail for a vaultbox (intake, and the
submission's local_delivery): resolve a recipient to its vaultbox and certificates, add the
trace fields, encrypt one copy per recipient and store it; replies only after COMMIT."""
