"""Read models for the console and the API: the queue, grants, audit, health (``console.py``), exposure."""
