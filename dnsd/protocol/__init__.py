"""The DNS protocol: the wire codec, UDP and TCP listeners, response rate limiting, the descriptor budget, SO_REUSEPORT workers."""
