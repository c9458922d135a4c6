"""Progress reporting and cancellation for long work, independent of any UI.

ComfyUI nodes build a :class:`Hooks` that drives ``comfy.utils.ProgressBar`` and asks ComfyUI's
model management whether the user pressed "Cancel"; the CLI builds one that logs. The core only
ever calls :meth:`Hooks.step`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from .errors import SelvaError

ProgressFn = Callable[[str, int, int], None]
InterruptedFn = Callable[[], bool]
# (stage, done, total, image): progress with a preview picture (e.g. a live loss curve, PIL)
PreviewFn = Callable[[str, int, int, Any], None]


class Interrupted(SelvaError):
    """The user cancelled the run; nothing half-finished was written."""


@dataclass
class Hooks:
    progress: Optional[ProgressFn] = None
    interrupted: Optional[InterruptedFn] = None
    preview: Optional[PreviewFn] = None

    def check(self) -> None:
        """Raise :class:`Interrupted` if the user asked to stop."""
        if self.interrupted is not None and self.interrupted():
            raise Interrupted("Cancelled by the user.")

    def step(self, stage: str, done: int, total: int, image: Any = None) -> None:
        """Report that ``done`` of ``total`` units of ``stage`` are finished, then honour a cancel.

        ``image`` (optional) goes to ``preview`` when set, else it is dropped.
        """
        if image is not None and self.preview is not None:
            self.preview(stage, done, total, image)
        elif self.progress is not None:
            self.progress(stage, done, total)
        self.check()


NO_HOOKS = Hooks()


def or_default(hooks: Optional[Hooks]) -> Hooks:
    return hooks if hooks is not None else NO_HOOKS
