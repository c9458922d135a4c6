"""The one exception this package raises for files and settings it cannot use.

The package stands alone (it imports nothing from SelVA); callers that have their own error
type, like SelVA's loaders, catch this one and re-raise theirs with the same message.
"""
from __future__ import annotations


class BigVGANError(ValueError):
    """A BigVGAN file or config that cannot be used; the message says which and why."""
