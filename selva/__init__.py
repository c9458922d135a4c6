"""SelVA core: text-conditioned selective video-to-audio generation in pure PyTorch.

Nothing here imports ComfyUI. The public entry point is :mod:`selva.pipeline`; modules are
imported lazily so that ``import selva`` stays cheap.
"""
