"""`sanitize audit RUN`: who each filter removed, with statistics, a report, and weights that undo the shift."""

from __future__ import annotations

import click

from sanitize.io.runfolder import RunFolder
from sanitize.pipeline.options import click_options, from_cli
from sanitize.pipeline.stage import run_stage
from sanitize.pipeline.stages.audit import AuditConfig, AuditStage
from sanitize_cli.main import emit
from sanitize_cli.options import json_option


@click.command()
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click_options("audit", AuditConfig)
@json_option
def audit(run, as_json, **values):
    stats = run_stage(AuditStage(from_cli("audit", AuditConfig, values)), RunFolder.open(run)).to_dict()
    lines = [f"audited stages {', '.join(stats['stages'])} by {', '.join(stats['attributes'])}: "
             f"{stats['flags']} flag(s)", f"report: {stats['paths']['html']}"]
    if "weights" in stats:
        lines.append(f"weights: {stats['paths']['weights']} (Kish effective sample size "
                     f"{stats['weights']['kish_ess']:.0f})")
    emit(stats, as_json, lines)
