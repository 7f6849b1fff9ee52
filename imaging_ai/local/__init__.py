"""The embedded default: every cloud part of the pipeline running on one machine, on loopback."""
