"""Administration CLI (python -m admin)."""
