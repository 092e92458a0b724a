"""The storage seam: event store, run index, leases, listener and the translation of driver errors."""
