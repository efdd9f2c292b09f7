"""Fault tests: real processes killed and restarted, bounded in time, loopback only."""
