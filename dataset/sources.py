"""What a dataset's source function returns: its volume references per split, typed."""
from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Sources"]


@dataclass
class Sources:
    """Volume references of a dataset (:class:`dataset.base.VolumeRef`): ``labeled_refs``, ``unlabeled_refs``,
    ``val_refs``, ``test_refs`` (None without a test split, ``test_missing`` says why), the foreground
    ``class_names`` (label 1 first); ``labeled_slices``: 2D datasets labeled per slice ((ref, z) pairs; None:
    every slice of the labeled volumes); ``unlabeled_missing``: why there is no unlabeled data; ``info``: what
    the split came from (layout, origin, dropped unlabeled files), shown and recorded with the run."""
    labeled_refs: list
    val_refs: list
    class_names: tuple
    unlabeled_refs: list = field(default_factory=list)
    test_refs: list | None = None
    labeled_slices: list | None = None
    test_missing: str | None = None
    unlabeled_missing: str | None = None
    info: dict = field(default_factory=dict)
