"""geotm's probe service: deep-health checks of registry replicas, published for dnsd."""
