"""The Textual approval console (``jit console``): the product's face.

Everything it shows and does goes through a :class:`app.domain.console.ConsoleSource`: the API's
``RemoteConsoleData`` for ``jit console``, or the database's ``ConsoleData`` in tests; screens hold
no business rules. Start it with ``JitConsole(RemoteConsoleData(client)).run()``.
"""
