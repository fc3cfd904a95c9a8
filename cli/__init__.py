"""The `sanitize` command line (installed as the package `sanitize_cli`). It parses options and calls the library."""
