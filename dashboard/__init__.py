"""embedguard dashboard."""
