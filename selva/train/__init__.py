"""Fine-tuning foundation: the flow-matching loss, datasets, and one training loop.

* :mod:`.loss` -- the generator's own rectified-flow objective (as MMAudio trains it).
* :mod:`.dataset` -- a folder of features ``.npz`` + same-stem audio, encoded once and cached.
* :mod:`.loop` -- :func:`run_training`: checkpoints, exact resume, loss curves, eval samples,
  progress/interrupt, NaN guard, data-parallel; every trainer (LoRA, vocoder tuning, textual
  inversion) supplies a :class:`~.loop.TrainTask` and reuses it.
* :mod:`.files` -- fresh numbered run folders and atomic writes.
"""
