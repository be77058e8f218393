"""embedguard pipeline."""
