"""The clients' side of the API: finding the server and calling it (``connection.py``). Imports
only the standard library and ``app.domain``: ``jit list`` starts in a few tens of milliseconds."""
