"""Shared set-up for the node and CLI tests: tiny models on disk, running nodes like ComfyUI does."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

import tiny
from comfy_pack import load_pack


def tiny_models_dir(tmp_path_factory) -> Path:
    """One tiny models dir per test session, shared by every module that asks for it."""
    root = Path(tmp_path_factory.getbasetemp()) / "selva_tiny_models"
    marker = root / ".complete"
    if not marker.exists():
        tiny.make_models_dir(root / "models", root / "hub", variants=("tiny_16k", "tiny_44k"))
        marker.write_text("ok")
    tiny.register_tiny_variants()
    return root / "models"


def run_node(node_id: str, **inputs):
    """Instantiate and run a node through NODE_CLASS_MAPPINGS inside inference mode, as ComfyUI does."""
    cls = load_pack().NODE_CLASS_MAPPINGS[node_id]
    with torch.inference_mode():
        return getattr(cls(), cls.FUNCTION)(**inputs)


H, W = 32, 48  # small frames: resizing to 384 / 224 dominates the cost of tiny-model tests


def frames(seconds: float = 1.0, fps: float = 25.0, seed: int = 0, h: int = H, w: int = W) -> torch.Tensor:
    """A ComfyUI IMAGE batch: (T, H, W, 3) float in [0, 1], values on the uint8 grid."""
    g = torch.Generator().manual_seed(seed)
    n = int(round(seconds * fps))
    return torch.randint(0, 256, (n, h, w, 3), generator=g).float() / 255.0


def write_video(path: Path, images: torch.Tensor, fps: int = 25) -> Path:
    """Encode an IMAGE batch losslessly-enough for tests (mpeg4, high quality) with PyAV."""
    import av

    data = (images.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width, stream.height = data.shape[2], data.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"qscale": "1"}
        for img in data:
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def decode_video(path: Path) -> tuple[torch.Tensor, float]:
    """Every frame of a file as an IMAGE batch, plus its rate (what VHS / Get Video Components give)."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = float(stream.average_rate)
        imgs = [torch.from_numpy(np.ascontiguousarray(f.to_ndarray(format="rgb24")))
                for f in container.decode(stream)]
    return torch.stack(imgs).float() / 255.0, rate


class FakeVideoFromFile:
    """Stands in for comfy_api's VideoFromFile: the two methods the extractor may call."""

    def __init__(self, source):
        self._source = source

    def get_stream_source(self):
        if hasattr(self._source, "seek"):
            self._source.seek(0)
        return self._source

    def get_components(self):  # must not be needed for a file-backed video
        raise AssertionError("a file-backed VIDEO must be streamed, not decoded to full frames")


class VideoFromComponents:
    """Stands in for comfy_api's VideoFromComponents (named alike: the extractor checks the name)."""

    class _Components:
        def __init__(self, images, frame_rate):
            self.images, self.frame_rate, self.audio = images, frame_rate, None

    def __init__(self, images: torch.Tensor, fps: float):
        self._c = self._Components(images, Fraction(fps).limit_denominator(1001))

    def get_components(self):
        return self._c


def env_for_models(monkeypatch, models_dir: Path) -> None:
    monkeypatch.setenv("SELVA_MODELS_DIR", str(models_dir))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a missing file must fail, never reach the network


def dog_features(model, cache_dir) -> object:
    """The test suites' usual features: 1 s of frames, "a dog barking", through the Extractor node."""
    feats, _, _ = run_node("SelvaFeatureExtractor", model=model, video=frames(1.0), prompt="a dog barking",
                           fps=25.0, duration=0.0, cache_dir=str(cache_dir),
                           mask_strength=1.0, mask_clip=True, mask_sync=True)
    return feats


def sampler_waveform(model, features, **inputs) -> torch.Tensor:
    """The Sampler node's waveform with the suites' usual inputs (2 steps, seed 0, no loudness
    normalisation); ``inputs`` override or add any of its inputs."""
    args = dict(model=model, features=features, prompt="", negative_prompt="", duration=0.0, steps=2,
                cfg_strength=4.5, seed=0, normalize=False, batch_size=1)
    args.update(inputs)
    (audio,) = run_node("SelvaSampler", **args)
    return audio["waveform"]
