"""Training datasets: the one reader every trainer uses, making a dataset from a folder of
videos, checking it (report), and the audio clean-up chain of the dataset nodes.

A dataset is a folder of clips, each a features ``.npz`` with a same-stem audio file beside it
(see :mod:`.reader`). ``dataset.json`` (written by :mod:`.folder`) is an index for people and the
Dataset Browser; the reader never needs it, so a folder made one clip per queue with the Feature
Extractor and one made by ``prepare-dataset`` train the same.
"""
from .reader import ClipFiles, find_clips, read_dataset

__all__ = ["ClipFiles", "find_clips", "read_dataset"]
