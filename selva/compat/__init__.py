"""Reading what the earlier SelVA ComfyUI pack (ethanfel/ComfyUI-SelVA) wrote.

Only the loaders that fall back to these readers import this package (the adapter, textual
inversion, vocoder and steering readers, the dataset reader, the sweep runner, the evaluator
lists and ``python -m selva convert``); nothing else in the pack depends on the earlier layouts.
``docs/coming-from-earlier-pack.md`` tells users what carries over.
"""
