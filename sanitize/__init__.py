"""sanitize: clean image-text pretraining data.

Stages: embed (CLIP), classify (certified safety filters), dedup (union of k-means clusterings),
audit (who the filters removed, and weights that undo the shift), export.
"""

__version__ = "0.2.0"
