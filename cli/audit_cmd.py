"""`sanitize audit RUN`: who each filter removed, with statistics, a report, and weights that undo the shift."""

from __future__ import annotations

import click

from sanitize.errors import ConfigError
from sanitize.io.runfolder import RunFolder
from sanitize.pipeline.stages.audit import DEFAULT_ATTRIBUTES, resolve_attribute, run_audit_stage
from sanitize.pipeline.stages.embed import load_run_model
from sanitize_cli.main import cli, emit
from sanitize_cli.options import json_option


def parse_target(text: str | None) -> dict[str, float] | None:
    """'young=0.75,old=0.25' → {'young': 0.75, 'old': 0.25}. Raises ConfigError for a malformed pair."""
    if not text:
        return None
    target = {}
    for pair in text.split(","):
        name, eq, value = pair.partition("=")
        try:
            target[name.strip()] = float(value)
        except ValueError:
            raise ConfigError(f"--target: {pair!r} is not GROUP=SHARE") from None
        if not eq or not name.strip():
            raise ConfigError(f"--target: {pair!r} is not GROUP=SHARE")
    return target


@cli.command()
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.option("--attribute", "attributes", multiple=True, default=DEFAULT_ATTRIBUTES, show_default=True,
              help="Built-in lexicon or zero-shot spec name, lexicon:PATH, zero-shot:PATH or column:NAME.")
@click.option("--weight-on", multiple=True, help="Attribute(s) whose pre-filter distribution weights restore.")
@click.option("--target", help="Target mix for --weight-on instead of the pre-filter one, e.g. young=0.75,old=0.25.")
@click.option("--device", default=None, help="Device for the CLIP text tower (zero-shot attributes).")
@json_option
def audit(run, attributes, weight_on, target, device, as_json):
    """Audit what the run's filters did to who is represented; write RUN/audit/report.{html,md,json}."""
    folder = RunFolder.open(run)
    sources = [resolve_attribute(a) for a in attributes]
    encode_text = None
    if any(s.kind == "zero-shot" for s in sources):
        encode_text = load_run_model(folder, device=device).encode_text
    stats = run_audit_stage(folder, attributes=attributes, encode_text=encode_text, weight_on=weight_on or None,
                            target=parse_target(target))
    lines = [f"audited stages {', '.join(stats['stages'])} by {', '.join(stats['attributes'])}: "
             f"{stats['flags']} flag(s)", f"report: {stats['paths']['html']}"]
    if "weights" in stats:
        lines.append(f"weights: {stats['paths']['weights']} (Kish effective sample size "
                     f"{stats['weights']['kish_ess']:.0f})")
    emit(stats, as_json, lines)
