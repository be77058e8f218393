"""embedguard capture."""
