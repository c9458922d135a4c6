"""ComfyUI-SelVA: text-conditioned selective video-to-audio generation (SelVA) for ComfyUI.

ComfyUI imports this folder as a package and reads the two tables below. Heavy libraries
(transformers, open_clip) load only when a model is loaded, not at start-up.
"""
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
