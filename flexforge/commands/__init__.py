"""One module per command: each a function taking domain objects and returning an exit code."""
