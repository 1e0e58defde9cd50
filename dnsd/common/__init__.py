"""Helpers every geotm service shares (dnsd, probes, standin): process lifecycle, logging, files, HOST:PORT, secrets, CLI basics."""
