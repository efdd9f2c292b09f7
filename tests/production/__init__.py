"""Production shape: the README production commands run as written."""
