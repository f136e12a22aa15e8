"""The demo web app (demo/web) and its build/serve helpers (demo/serve.py)."""
