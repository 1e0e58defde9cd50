"""The DNS protocol: the per-query wire format and the packed answers, UDP and TCP listeners, response rate
limiting, the descriptor budget, SO_REUSEPORT workers."""
