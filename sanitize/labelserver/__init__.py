"""`sanitize label serve`: a local labeling page. `session` holds the state, `app` serves it over HTTP."""

from sanitize.labelserver.app import LabelServer, is_loopback
from sanitize.labelserver.session import BatchItem, LabelingSession, Outcome

__all__ = ["BatchItem", "LabelServer", "LabelingSession", "Outcome", "is_loopback"]
