"""embedguard replay."""
