"""The control plane's HTTP API (first step of ``jit server``): authentication turns the connection
into a principal before any handler runs (``auth.py``); handlers are in ``api.py``."""
