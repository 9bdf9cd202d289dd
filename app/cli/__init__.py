"""Front end of the command line: ``main.py`` parses, dispatches and prints. No business rules, no SQL."""
