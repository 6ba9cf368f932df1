"""sim: many simulated agents on one machine."""
