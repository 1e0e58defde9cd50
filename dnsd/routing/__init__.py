"""Routing: replica health (health, feed from probes), the global name's choice (policy, netmatch), operator overrides, and the failover budget."""
