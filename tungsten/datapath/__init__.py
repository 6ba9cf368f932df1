"""datapath."""
