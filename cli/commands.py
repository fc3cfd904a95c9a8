"""Register every working command on the `sanitize` group (import order = help order)."""

from sanitize_cli import (  # noqa: F401
    audit_cmd,
    classify_cmd,
    data_cmds,
    dedup_cmd,
    demo_cmd,
    embed_cmd,
    label_cmds,
    label_serve_cmd,
    run_cmd,
)
