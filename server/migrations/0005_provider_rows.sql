-- Provider rows are reused by a provider that reconnects (its key, or without one its address): find them fast.
CREATE INDEX providers_address ON providers(address) WHERE identity_id IS NULL;
