"""The product's own vocabulary, pure: states and their transitions, errors, input checks, views.

Nothing here imports the store, the jobs, the CLI or the console (an import-linter contract)."""
