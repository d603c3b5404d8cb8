"""One module per ``fleetkeeper`` subcommand: ``register(sub)`` and ``run(args) -> int``."""
