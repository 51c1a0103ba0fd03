"""Web Key Directory (draft-koch-openpgp-webkey-service): vaultboxes' OpenPGP public keys for
senders' clients, over HTTP. `start(runtime)` is registered in COMPONENTS as "wkd"."""
