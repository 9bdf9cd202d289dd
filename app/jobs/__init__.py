"""The engine's jobs: the timer and sweep (``engine.py``), the ServiceNow sync, the outbox's
delivery, reconcile."""
