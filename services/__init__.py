"""One module per process of the machine (workers, servers)."""
