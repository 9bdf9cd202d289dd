"""Fleet delivery of sudo rules through ``jit agent`` (ARCHITECTURE.md, "Fleet delivery"): what each
host should hold (``desired.py``), what it reports it holds (``reports.py``), the ``agent``
backend that waits on those reports (``backend.py``), and the agent itself (``agent.py``, with
``sessions.py`` ending a person's sudo sessions at revoke)."""
