"""Metrics the field reports for video-to-audio models, computed the way hkchengrex/av-benchmark does.

One module per metric, each loading its network strictly from the released file:

* :mod:`.desync` -- Synchformer's predicted audio-visual offset (seconds, lower is better);
* :mod:`.clap` -- LAION-CLAP cosine similarity of each clip's audio and its prompt (higher is better);
* :mod:`.passt` -- PaSST embeddings and class logits, for :mod:`.fd` (Frechet distance of the
  generated set to the real set, lower is better) and :mod:`.kl` (KL divergence of the real
  clip's class distribution to the generated one's, per pair, lower is better);
* :mod:`.spectral` -- today's spectral statistics (log-spectral distance to the real audio);

:mod:`.run` generates a held-out dataset with each adapter and scores it; :mod:`.report` writes
``metrics.json`` and the chart. Nothing here imports ComfyUI.
"""
