"""The Textual approval console (``jit console``): the product's face.

Everything it shows and does goes through :class:`app.queries.console.ConsoleData`; screens hold no
business rules. Start it with ``JitConsole(ConsoleData(services, person)).run()``.
"""
