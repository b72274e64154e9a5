"""DKIM private keys sealed at rest: what a database alone shows, and what does not open."""

from __future__ import annotations

import pytest

from services.delivery.domain import dkim
from services.delivery.domain.sealing import PREFIX, Sealer, SealError

WS = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
OTHER_WS = "0b6e3a8e-1c2d-4e5f-8a9b-0c1d2e3f4a5b"


@pytest.fixture(scope="module")
def pem() -> str:
    return dkim.generate_rsa_key().pem


def test_a_sealed_key_opens_to_the_same_pem_and_shows_none_of_it(pem: str) -> None:
    sealer = Sealer("a long operator secret")
    sealed = sealer.seal(pem, workspace_id=WS, domain="shop.example.com")
    assert sealed.startswith(PREFIX)
    assert "PRIVATE KEY" not in sealed
    assert not any(line in sealed for line in pem.splitlines()[1:-1])
    assert sealer.unseal(sealed, workspace_id=WS, domain="shop.example.com") == pem
    # A fresh nonce each time: the same key sealed twice does not look the same.
    assert sealer.seal(pem, workspace_id=WS, domain="shop.example.com") != sealed


def test_another_secret_does_not_open_it_and_says_which_variable(pem: str) -> None:
    sealed = Sealer("the first secret").seal(pem, workspace_id=WS, domain="shop.example.com")
    with pytest.raises(SealError, match="NUDGE_DATA_KEY"):
        Sealer("another secret").unseal(sealed, workspace_id=WS, domain="shop.example.com")


@pytest.mark.parametrize(
    ("workspace_id", "domain"), [(OTHER_WS, "shop.example.com"), (WS, "other.example.com")]
)
def test_a_row_copied_to_another_workspace_or_domain_does_not_open(
    pem: str, workspace_id: str, domain: str
) -> None:
    sealer = Sealer("a long operator secret")
    sealed = sealer.seal(pem, workspace_id=WS, domain="shop.example.com")
    with pytest.raises(SealError):
        sealer.unseal(sealed, workspace_id=workspace_id, domain=domain)


def test_a_tampered_or_foreign_value_is_refused_and_an_old_clear_pem_is_read(pem: str) -> None:
    sealer = Sealer("a long operator secret")
    sealed = sealer.seal(pem, workspace_id=WS, domain="d.example")
    flipped = sealed[:-6] + ("A" if sealed[-6] != "A" else "B") + sealed[-5:]
    for bad in (flipped, PREFIX + "not base64!", "garbage"):
        with pytest.raises(SealError):
            sealer.unseal(bad, workspace_id=WS, domain="d.example")
    assert sealer.unseal(pem, workspace_id=WS, domain="d.example") == pem
