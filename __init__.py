"""ComfyUI-SelVA: text-conditioned selective video-to-audio generation (SelVA) for ComfyUI.

ComfyUI imports this folder as a package and reads the two tables below. Heavy libraries
(transformers, open_clip) load only when a model is loaded, not at start-up.
"""
if __package__ or getattr(__spec__, "parent", None):  # Python resolves "." from either
    from pathlib import Path

    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
    from .nodes.other_packs import warn_about_other_selva_packs

    # The earlier SelVA pack registers the same node ids; ComfyUI would keep one of each silently.
    # Not resolved: the folder ComfyUI loaded us from may be a link, its siblings are the packs.
    warn_about_other_selva_packs(Path(__file__).absolute().parent, NODE_CLASS_MAPPINGS)
else:
    # Loaded as a plain file, not as a package: pytest does this with a checkout whose folder
    # name is not a valid package name (it runs every package __init__ above the tests). There
    # is no package to import the nodes from, and nothing here needs them.
    NODE_CLASS_MAPPINGS = {}
    NODE_DISPLAY_NAME_MAPPINGS = {}

# The training UI's button (skip a sweep's running experiment) lives in web/.
WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
