"""DKIM private keys sealed at rest (AES-256-GCM under ``NUDGE_DATA_KEY``).

The send path needs each key in clear, so delivery holds the means to open them; what the
seal protects against is the database on its own: a dump, a backup, a replica or a support
query shows ciphertext, and a sealed row copied to another workspace or domain does not
open there (the workspace and the domain are the cipher's associated data).

The AES key is derived from the secret with HKDF (SHA-256, an info string naming this use),
so the operator's secret is never used as a key directly and other uses of it stay apart.
Rows written before sealing (PEM in clear) are still read; a row that does not open (the
secret was changed) raises :class:`SealError` naming the variable, never a silent garbage key.
Rotation of the secret is not built: a new ``NUDGE_DATA_KEY`` means setting the keys again.
"""

from __future__ import annotations

import base64
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

PREFIX = "sealed:v1:"
_INFO = b"nudge delivery: DKIM private keys at rest, v1"
_NONCE_BYTES = 12


class SealError(Exception):
    """A sealed value that does not open with this process's key."""


class Sealer:
    def __init__(self, secret: str) -> None:
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(
            secret.encode()
        )
        self._aead = AESGCM(key)

    def seal(self, plaintext: str, *, workspace_id: str, domain: str) -> str:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, plaintext.encode(), _bound_to(workspace_id, domain))
        return PREFIX + base64.b64encode(nonce + sealed).decode("ascii")

    def unseal(self, stored: str, *, workspace_id: str, domain: str) -> str:
        if not stored.startswith(PREFIX):
            if stored.lstrip().startswith("-----BEGIN"):
                return stored  # written before keys were sealed
            raise SealError(f"the stored key of {domain} is neither sealed nor a PEM key")
        try:
            raw = base64.b64decode(stored[len(PREFIX) :], validate=True)
            opened = self._aead.decrypt(
                raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], _bound_to(workspace_id, domain)
            )
        except (InvalidTag, ValueError) as err:
            raise SealError(
                f"the DKIM key of {domain} does not open: NUDGE_DATA_KEY is not the secret it"
                " was sealed with (or the row was copied from another workspace or domain)"
            ) from err
        return opened.decode()


def _bound_to(workspace_id: str, domain: str) -> bytes:
    return f"dkim_keys\x00{workspace_id}\x00{domain}".encode()
