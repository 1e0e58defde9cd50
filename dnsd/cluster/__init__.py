"""Many dnsd and probes instances sharing one truth through etcd (the `cluster:` section)."""
