"""The running state: the snapshot swapped whole (runtime), the Dnsd that owns every change to it (service), counters, off-loop work."""
