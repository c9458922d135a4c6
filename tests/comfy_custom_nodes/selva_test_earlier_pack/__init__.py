"""Test-only stand-in for the earlier SelVA pack installed beside ours.

Its registration table names SelVA node ids the way the earlier pack's does, so the start-up
check (nodes/other_packs.py) finds this folder and logs its warning. It registers no node, so
the server's other tests keep running our nodes.
"""
_EARLIER_TABLE = {
    "SelvaModelLoader": "SelVA Model Loader",
    "SelvaFeatureExtractor": "SelVA Feature Extractor",
    "SelvaSampler": "SelVA Sampler",
}

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
