"""Operations: the admin API and its client, the admin token, Prometheus metrics, the status document and its HTML page."""
