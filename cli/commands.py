"""Every command of `sanitize` and of `sanitize label`: name -> ("module:attribute", first paragraph of its help).

The groups import a command's module only when that command runs or shows its help (`sanitize_cli.main.LazyGroup`),
so `sanitize --help` lists the commands from these tables without importing any. The text here is the first
paragraph of the command's help, written only here: the command's docstring holds the rest, if any.
Adding a command: a function in a module of cli/ (made with `click.command`) and one line here.
"""

COMMANDS: dict[str, tuple[str, str]] = {
    "audit": ("sanitize_cli.audit_cmd:audit",
              "Audit what filters did to who is represented (a run's stages, or filters run elsewhere on a "
              "manifest); write report.{html,md,json}."),
    "classify": ("sanitize_cli.classify_cmd:classify",
                 "Certify a recall-favouring threshold per category from random-audit labels and filter every row "
                 "of RUN."),
    "dedup": ("sanitize_cli.dedup_cmd:dedup",
              "Remove near-duplicates in SOURCE (run folder, clip-retrieval folder, parquet, or .npy)."),
    "demo": ("sanitize_cli.demo_cmd:demo",
             "Generate a sample (images, captions, near-duplicates, broken files) in OUT and run `sanitize run` on "
             "it."),
    "embed": ("sanitize_cli.embed_cmd:embed",
              "Embed the images and captions of MANIFEST with CLIP into the run folder OUT (resumable)."),
    "export": ("sanitize_cli.data_cmds:export",
               "Write the rows no stage removed, with the input's own columns, plus removed.parquet with reasons."),
    "init": ("sanitize_cli.run_cmd:init", "Write a commented starter config to PATH (default: sanitize.toml)."),
    "inspect": ("sanitize_cli.data_cmds:inspect",
                "Read MANIFEST (file, glob or folder), check that uids are unique, and describe it."),
    "label": ("sanitize_cli.label_cmds:label",
              "Label safety categories: seed, active-learning rounds, audit samples, status."),
    "run": ("sanitize_cli.run_cmd:run_",
            "Run embed → classify → dedup → audit → export on MANIFEST into the run folder OUT (resumable)."),
}

LABEL_COMMANDS: dict[str, tuple[str, str]] = {
    "add": ("sanitize_cli.label_cmds:add",
            "Store the answers in FILE (uid,label[,round]; CSV or parquet) for CATEGORY and retrain its classifier."),
    "audit-sample": ("sanitize_cli.label_batch_cmds:audit_sample",
                     "Draw a random (or score-stratified) audit sample of CATEGORY from the whole run, as a labeling "
                     "batch."),
    "import": ("sanitize_cli.label_cmds:import_",
               "Seed CATEGORY with labelled examples from FILE: a uid or image path column and a label column."),
    "init": ("sanitize_cli.label_cmds:init", "Create a labeling project folder PROJECT with its categories.toml."),
    "next": ("sanitize_cli.label_batch_cmds:next_",
             "Propose the next batch of CATEGORY to label: CSV/parquet to fill in and an HTML contact sheet."),
    "serve": ("sanitize_cli.label_serve_cmd:serve",
              "Serve a labeling page for CATEGORY: guidelines, then one image at a time (keys y/n/s/u/?)."),
    "status": ("sanitize_cli.label_cmds:status",
               "Labels by source and round, cross-validated quality, removal rate, and whether the saved classifier "
               "is current, per category (or one). Reads only: a stale classifier is reported, not retrained."),
}
