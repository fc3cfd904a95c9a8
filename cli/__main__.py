"""`python -m sanitize_cli` runs the `sanitize` command."""

from sanitize_cli.main import main

main()
