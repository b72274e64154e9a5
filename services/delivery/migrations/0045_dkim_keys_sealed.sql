-- delivery: DKIM private keys are sealed at rest from now on (services/delivery/domain/sealing.py):
-- 0020's comment ("kept as PKCS#8 PEM") describes only the keys stored before this.
COMMENT ON COLUMN dkim_keys.private_key_pem IS
    'sealed:v1:<base64 nonce+AES-256-GCM ciphertext> under a key derived from NUDGE_DATA_KEY,'
    ' bound to (workspace_id, domain); PKCS#8 PEM in clear for keys stored before sealing';
