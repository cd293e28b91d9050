"""One module per subcommand of ``python -m src_training``; each exposes ``register(subparsers)``."""
