"""Adapters for the generator: LoRA (trainable and frozen), its file format and its patch."""
from .format import (FORMAT, FORMAT_VERSION, AdapterMeta, LoraAdapter, LoraWeights, load_adapter,
                     save_adapter)
from .lora import (LoraConfig, LoraLayer, LoraSet, check_adapter, find_targets, parse_targets,
                   target_suffixes)
from .patch import LoraPatch, check_adapter_for, resolve_adapter

__all__ = [
    "FORMAT", "FORMAT_VERSION", "AdapterMeta", "LoraAdapter", "LoraWeights", "load_adapter",
    "save_adapter", "LoraConfig", "LoraLayer", "LoraSet", "check_adapter", "find_targets",
    "parse_targets", "target_suffixes", "LoraPatch", "check_adapter_for", "resolve_adapter",
]
