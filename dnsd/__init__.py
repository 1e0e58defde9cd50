"""geotm's DNS server: authoritative answers and traffic management for registry replicas."""
