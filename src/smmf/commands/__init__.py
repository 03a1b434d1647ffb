"""The ``smmf`` command line: one module per subcommand (compare, train, bench, memory) over the library.

Arrows run one way: these modules import the library (``smmf.optimizer``, ``smmf.memory``, ...), and
nothing in the library imports them, so ``import smmf`` loads no command-line code and no optional
dependency. The entry point is :func:`smmf.commands.main.main`.
"""
