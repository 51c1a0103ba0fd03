"""The certificate cache keeps the most recently used entries when full (many distinct
vaultboxes do not empty it)."""

from __future__ import annotations

from encimap.delivery.recipients import CertificateCache


class CountingCache(CertificateCache):
    def __init__(self, max_entries: int) -> None:
        super().__init__(max_entries)
        self.checked: list[str] = []

    def _check(self, pem: str, address: str, allow_address_mismatch: bool):  # type: ignore[override]
        self.checked.append(pem)
        return super()._check(pem, address, allow_address_mismatch)


def test_full_cache_drops_the_least_recently_used_entry():
    cache = CountingCache(max_entries=2)
    for pem in ["a", "b", "a", "c", "a", "b"]:
        assert cache.usable([pem], "x@vault.test", allow_address_mismatch=False) == []
    # "a" stayed (used again before "c" arrived); "b" was the least recently used, dropped.
    assert cache.checked == ["a", "b", "c", "b"]
