"""The stages of `sanitize run`, in pipeline order: the one list the runner, the config and the CLI read.

Adding a stage is one module under `sanitize/pipeline/stages/` (a `Stage` subclass with its config dataclass; see
`caption_length.py`) and one line here. Its config section, its `--set` keys, its entry in `sanitize init`'s
starter file, its row in the stats table and its decisions in export and audit follow from this list.
"""

from __future__ import annotations

from sanitize.errors import ConfigError
from sanitize.pipeline.stage import Stage
from sanitize.pipeline.stages.align import AlignStage
from sanitize.pipeline.stages.audit import AuditStage
from sanitize.pipeline.stages.caption_length import CaptionLengthStage
from sanitize.pipeline.stages.classify import ClassifyStage
from sanitize.pipeline.stages.decontaminate import DecontaminateStage
from sanitize.pipeline.stages.dedup import DedupStage
from sanitize.pipeline.stages.embed import EmbedStage
from sanitize.pipeline.stages.export import ExportStage
from sanitize.pipeline.stages.hashlist import HashlistStage

STAGES: tuple[type[Stage], ...] = (
    HashlistStage,  # first: a known-bad image is removed before any other stage reads it
    EmbedStage,
    CaptionLengthStage,
    AlignStage,
    ClassifyStage,
    DecontaminateStage,
    DedupStage,
    AuditStage,
    ExportStage,
)


def stage_classes() -> tuple[type[Stage], ...]:
    """Every registered stage class, in pipeline order."""
    return STAGES


def stage_names() -> tuple[str, ...]:
    return tuple(s.name for s in STAGES)


def stage_class(name: str) -> type[Stage]:
    """The stage class called `name`; ConfigError listing the stages when there is none."""
    for cls in STAGES:
        if cls.name == name:
            return cls
    raise ConfigError(f"unknown stage {name!r}; stages: {', '.join(stage_names())}")
