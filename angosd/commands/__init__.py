"""Subcommands of ``angosd``: each module has ``register(subparsers)`` that adds one parser
whose ``run(args) -> int`` default does the work."""
