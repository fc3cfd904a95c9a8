"""`sanitize label serve`: label a category in the browser, one image at a time, on this machine."""

from __future__ import annotations

import getpass
import os

import click

from sanitize.io.runfolder import RunFolder
from sanitize.safety.names import COLD_START, STRATEGIES
from sanitize_cli.label_cmds import project_option, run_option
from sanitize_cli.options import seed_option

DEFAULT_HOST = "127.0.0.1"


def _default_annotator() -> str:
    try:
        return os.environ.get("USER") or getpass.getuser()
    except (KeyError, OSError):
        return ""


@click.command("serve")
@click.argument("category")
@project_option
@run_option
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535),
              help="Port to listen on; 0 picks a free one.")
@click.option("--host", default=None,
              help=f"Address to listen on (default {DEFAULT_HOST}, this machine only). Any other address lets "
                   "other machines reach the page; the session token still guards every answer.")
@click.option("--n", "n", default=50, show_default=True, type=click.IntRange(min=1), help="Batch size.")
@click.option("--strategy", default="uncertainty", show_default=True, type=click.Choice([*STRATEGIES, COLD_START]),
              help="How later rounds choose rows (changeable on the page between rounds).")
@click.option("--annotator", default=None, help="Name stored with every answer (default: $USER).")
@seed_option
@click.option("--device", default=None, help="Device for the CLIP text tower (cold start only).")
def serve(category, project, run, port, host, n, strategy, annotator, seed, device):
    """Continues the latest unfinished batch of the project, else proposes one. Answers go into the label store
    as they are given; when the batch is done the page retrains and offers the next round. Stop with Ctrl-C.
    """
    # The page, the session and the model load scikit-learn and torch: imported to serve, not for --help.
    from sanitize.labelserver.app import LabelServer, is_loopback
    from sanitize.labelserver.session import LabelingSession
    from sanitize.pipeline.stages.embed import load_run_model
    from sanitize.safety.project import LabelProject

    if host is None:
        host = DEFAULT_HOST
    elif not is_loopback(host):
        click.echo(f"warning: listening on {host}: other machines can reach this page and its images; the "
                   "session token in the address is all that guards it", err=True)
    folder = RunFolder.open(run)
    model = {}

    def encode_text(prompts):
        if "clip" not in model:  # the text tower loads only for a cold start
            model["clip"] = load_run_model(folder, device=device)
        return model["clip"].encode_text(prompts)

    session = LabelingSession(LabelProject.open(project), folder, category, n=n, strategy=strategy, seed=seed,
                              annotator=_default_annotator() if annotator is None else annotator,
                              encode_text=encode_text)
    round_no = session.load()
    server = LabelServer(session, host, port)
    click.echo(f"labeling {category}, round {round_no} ({len(session.uids)} images): open {server.url}")
    click.echo("stop with Ctrl-C; every answer is already saved")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        click.echo("stopped")
    finally:
        server.server_close()
