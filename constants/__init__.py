"""Names shared by every process: machine states, events, Redis keys, services, tunables."""
