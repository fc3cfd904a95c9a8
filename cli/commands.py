"""Register every working command on the `sanitize` group (import order = help order)."""

from sanitize_cli import audit_cmd, data_cmds, dedup_cmd, demo_cmd, embed_cmd  # noqa: F401
