"""geotm-backend: a stand-in registry backend (tiny in-memory OCI registry + health endpoints) with switchable failure modes, for demos and tests."""
