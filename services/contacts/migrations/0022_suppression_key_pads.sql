-- The HMAC pads of each workspace's suppression key, kept beside it, so that hashing an address
-- is two sha256() calls (address_hash_padded) instead of rebuilding the 64-byte pads for every
-- contact: CountEligible hashes every address of an audience.
ALTER TABLE workspaces ADD COLUMN suppression_ipad bytea
    GENERATED ALWAYS AS (hmac_pad(suppression_key, 54)) STORED;
ALTER TABLE workspaces ADD COLUMN suppression_opad bytea
    GENERATED ALWAYS AS (hmac_pad(suppression_key, 92)) STORED;
