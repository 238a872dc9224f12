"""Model-backed extractors for real images: a captioner for text, a detector for boxes, SAM for blobs.

All load ``transformers`` checkpoints from a local directory only (``local_files_only=True``): nothing
is downloaded at run time. Put a checkpoint there once with ``save_pretrained`` (or
``huggingface-cli download --local-dir``) and point the extractor at it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from kaleido.latents.base import Extractor
from kaleido.latents.blob import BlobLatent, GroundedBlob
from kaleido.latents.box import BoxLatent, GroundedBox
from kaleido.latents.geometry import Order, clean_phrase
from kaleido.latents.masks import box_mask, ellipse_from_mask, to_uint8_images


def _local_dir(path: str, what: str) -> Path:
    directory = Path(path).expanduser()
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(
            f"{what} checkpoint not found: {directory} has no config.json. Extractors load local directories "
            "only (nothing is downloaded); save one there with `save_pretrained` first"
        )
    return directory


class _ModelExtractor(Extractor):
    """A model-backed extractor: ``extract --device`` moves its model, so one process per GPU (torchrun's
    ``LOCAL_RANK``) needs no ``device`` argument of its own."""

    model: torch.nn.Module
    device: str

    def to(self, device: str) -> _ModelExtractor:
        self.model.to(device)
        self.device = device
        return self


class CaptionerTextExtractor(_ModelExtractor):
    """Descriptions for the ``text`` latent from an image-to-text model, prompted with the condition.

    The prompt (``prompt`` with the image's condition filled in) is the start of the caption and the
    model continues it, so each caption begins with its condition (as the tokenizer writes it back: an
    uncased BLIP lowercases it) and goes on to describe the image. ``prompt=None`` captions unprompted.
    The caption's whitespace is collapsed to single spaces: the joined multi-type latent is line-based.

    Two families, each prompted its own way:

    * encoder-decoder captioners (``VisionEncoderDecoderModel``, e.g. ViT-GPT2): the prompt follows the
      decoder start token in ``decoder_input_ids``;
    * BLIP (``BlipForConditionalGeneration``): its conditional captioning, ``input_ids`` =
      start, prompt, ``[SEP]`` (BLIP swaps in its own start token and drops the ``[SEP]``).

    A batch holds prompts of one token length, so nothing is padded and batching gives exactly what
    one image at a time gives; conditions of a data set share few lengths, so batches stay full.

    Args:
        model_path: local directory with the model, its image processor and its tokenizer
            (``save_pretrained`` of each).
        prompt: the prompt template, ``{condition}`` replaced by the image's condition; ``None``: no prompt.
        max_new_tokens: the longest continuation.
        num_beams: beam width (1: greedy); decoding is deterministic either way.
        batch_size: images per ``generate`` call.
        device: where the model runs (`extract --device` moves it).
    """

    def __init__(
        self,
        model_path: str,
        prompt: str | None = "{condition}",
        max_new_tokens: int = 60,
        num_beams: int = 1,
        batch_size: int = 32,
        device: str = "cpu",
    ) -> None:
        from transformers import AutoImageProcessor, AutoTokenizer  # late: a slow import

        try:
            from transformers import AutoModelForImageTextToText as AutoCaptioner
        except ImportError:  # transformers < 4.46
            from transformers import AutoModelForVision2Seq as AutoCaptioner  # type: ignore[no-redef]

        if prompt is not None:
            prompt.format(condition="")  # a bad template fails here, not at the first image
        if batch_size < 1 or max_new_tokens < 1 or num_beams < 1:
            raise ValueError(
                f"batch_size, max_new_tokens, num_beams must be >= 1: {batch_size}, {max_new_tokens}, {num_beams}"
            )
        directory = _local_dir(model_path, "captioner")
        self.processor = AutoImageProcessor.from_pretrained(directory, local_files_only=True)
        self.tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        self.model = AutoCaptioner.from_pretrained(directory, local_files_only=True).to(device).eval()
        self.prompt, self.max_new_tokens, self.num_beams = prompt, max_new_tokens, num_beams
        self.batch_size, self.device = batch_size, device
        self.prompt_key, self.prefix, self.suffix = self._prompting(directory)

    def _prompting(self, directory: Path) -> tuple[str, list[int], list[int]]:
        """The ``generate`` argument that carries the prompt, and the ids around the prompt's."""
        config = self.model.config
        if config.model_type == "blip":
            text = config.text_config
            return "input_ids", [text.bos_token_id], [text.sep_token_id]
        if config.is_encoder_decoder:
            start = self.model.generation_config.decoder_start_token_id
            start = start if start is not None else config.decoder_start_token_id
            if start is None:
                raise ValueError(
                    f"captioner {directory} has no decoder_start_token_id; set it in its generation config"
                )
            return "decoder_input_ids", [int(start)], []
        raise ValueError(
            f"captioner {directory} is a {type(self.model).__name__} ({config.model_type!r}); supported are "
            "encoder-decoder captioners (VisionEncoderDecoderModel) and BLIP (BlipForConditionalGeneration)"
        )

    def prompt_ids(self, condition: str) -> list[int]:
        """What ``generate`` continues from, for one condition."""
        if self.prompt is None:
            return self.prefix + self.suffix
        ids = self.tokenizer(self.prompt.format(condition=condition), add_special_tokens=False)["input_ids"]
        return self.prefix + list(ids) + self.suffix

    def _groups(self, prompts: Sequence[list[int]]) -> Iterator[list[int]]:
        by_length: dict[int, list[int]] = defaultdict(list)
        for index, ids in enumerate(prompts):
            by_length[len(ids)].append(index)
        for indices in by_length.values():
            for start in range(0, len(indices), self.batch_size):
                yield indices[start : start + self.batch_size]

    @torch.no_grad()
    def __call__(self, images: Tensor, conditions: Sequence[str]) -> list[str]:
        arrays = to_uint8_images(images)
        if len(conditions) != len(arrays):
            raise ValueError(f"{len(arrays)} images but {len(conditions)} conditions; give one per image")
        prompts = [self.prompt_ids(c) for c in conditions]
        captions = [""] * len(arrays)
        for group in self._groups(prompts):
            pixels = self.processor(images=[arrays[i] for i in group], return_tensors="pt")["pixel_values"]
            ids = torch.tensor([prompts[i] for i in group], dtype=torch.long, device=self.device)
            out = self.model.generate(
                pixel_values=pixels.to(self.device, self.model.dtype),
                **{self.prompt_key: ids},
                max_new_tokens=self.max_new_tokens,
                num_beams=self.num_beams,
                do_sample=False,
            )
            for index, text in zip(group, self.tokenizer.batch_decode(out, skip_special_tokens=True)):
                captions[index] = " ".join(text.split())
        return captions


@runtime_checkable
class BoxSource(Protocol):
    """What a blob extractor needs from a box extractor: the grid of its boxes, and the boxes."""

    grid: int

    def __call__(self, images: Tensor, conditions: Sequence[str]) -> list[list[GroundedBox]]: ...


class DetectorBoxExtractor(_ModelExtractor):
    """Boxes from a closed-vocabulary object detector (DETR-style ``AutoModelForObjectDetection``).

    The phrase is the detected class name (``model.config.id2label``), cleaned into a valid phrase.
    The best-scoring ``max_objects`` detections above ``threshold`` are kept, then put in ``order``.

    Args:
        model_path: local directory with the detector and its image processor (``save_pretrained``).
        labels: class names to keep (``None``: all); an unknown name is an error.
        threshold: keep detections whose score is above this.
        grid / max_objects / order: those of the :class:`~kaleido.latents.box.BoxLatent` produced.
        device: where the detector runs (`extract --device` moves it).
    """

    def __init__(
        self,
        model_path: str,
        labels: list[str] | None = None,
        threshold: float = 0.3,
        grid: int = 1000,
        max_objects: int = 8,
        order: Order = "raster",
        device: str = "cpu",
    ) -> None:
        from transformers import AutoImageProcessor, AutoModelForObjectDetection  # late: a slow import

        directory = _local_dir(model_path, "detector")
        self.processor = AutoImageProcessor.from_pretrained(directory, local_files_only=True)
        self.model = AutoModelForObjectDetection.from_pretrained(directory, local_files_only=True).to(device).eval()
        self.id2label = {int(k): str(v) for k, v in self.model.config.id2label.items()}
        if labels is not None:
            unknown = sorted(set(labels) - set(self.id2label.values()))
            if unknown:
                raise ValueError(
                    f"labels {unknown} are not classes of {directory}; it knows {sorted(self.id2label.values())}"
                )
        self.labels = None if labels is None else set(labels)
        self.threshold, self.grid, self.device = threshold, grid, device
        self.latent = BoxLatent(grid, max_objects, order)

    @torch.no_grad()
    def detect(self, images: Tensor) -> list[list[tuple[float, str, tuple[float, float, float, float]]]]:
        """Per image: ``(score, phrase, normalised box)``, best score first, filtered by label and threshold."""
        arrays = to_uint8_images(images)
        height, width = arrays[0].shape[:2]
        inputs = self.processor(images=arrays, return_tensors="pt").to(self.device)
        outputs = self.model(**inputs)
        results = self.processor.post_process_object_detection(
            outputs, threshold=self.threshold, target_sizes=[(height, width)] * len(arrays)
        )
        scale = np.array([width, height, width, height], dtype=np.float64)
        detections = []
        for result in results:
            found = []
            for score, label, box in zip(
                result["scores"].tolist(), result["labels"].tolist(), result["boxes"].cpu().numpy()
            ):
                name = self.id2label.get(int(label), f"LABEL_{int(label)}")
                phrase = clean_phrase(name)
                if phrase is None or (self.labels is not None and name not in self.labels):
                    continue
                found.append((float(score), phrase, tuple(float(v) for v in np.clip(box / scale, 0.0, 1.0))))
            detections.append(sorted(found, key=lambda d: -d[0]))
        return detections

    def __call__(self, images: Tensor, conditions: Sequence[str]) -> list[list[GroundedBox]]:  # noqa: ARG002
        return [
            self.latent.canonical(
                [self.latent.from_normalised(phrase, box) for _, phrase, box in found[: self.latent.max_objects]]
            )
            for found in self.detect(images)
        ]


class SamBlobExtractor(_ModelExtractor):
    """Blobs the paper's way: each box of ``box_extractor`` prompts SAM, the mask becomes an ellipse.

    The ellipse is the mask's second-moment fit (:func:`~kaleido.latents.masks.ellipse_from_mask`);
    the phrase is the box's. An empty mask falls back to the ellipse of the box itself, so the blob
    latent keeps one object per box (a combined box | blob latent stays aligned).

    Args:
        sam_path: local directory with a ``SamModel`` and its ``SamProcessor`` (``save_pretrained``).
        box_extractor: anything that returns box latents and has their ``grid`` (e.g.
            :class:`DetectorBoxExtractor`, :class:`kaleido.shapes.latents.ShapesBoxExtractor`).
        grid / max_objects / order: those of the :class:`~kaleido.latents.blob.BlobLatent` produced.
        isotropy_tolerance: axes closer than this fraction become a circle with ``theta = 0``.
        device: where SAM runs, and its box extractor (`extract --device` moves both).
    """

    def __init__(
        self,
        sam_path: str,
        box_extractor: BoxSource,
        grid: int = 1000,
        max_objects: int = 8,
        order: Order = "raster",
        isotropy_tolerance: float = 0.05,
        device: str = "cpu",
    ) -> None:
        from transformers import SamModel, SamProcessor  # late: a slow import

        if not isinstance(box_extractor, BoxSource):
            raise TypeError(
                f"box_extractor must be callable and have a `grid` (a box extractor), got {box_extractor!r}"
            )
        directory = _local_dir(sam_path, "SAM")
        self.processor = SamProcessor.from_pretrained(directory, local_files_only=True)
        self.model = SamModel.from_pretrained(directory, local_files_only=True).to(device).eval()
        self.box_extractor = box_extractor
        self.isotropy_tolerance, self.grid, self.device = isotropy_tolerance, grid, device
        self.latent = BlobLatent(grid, max_objects, order)

    def to(self, device: str) -> SamBlobExtractor:
        if isinstance(self.box_extractor, Extractor):  # its boxes are read on the same device
            self.box_extractor.to(device)
        super().to(device)
        return self

    @torch.no_grad()
    def masks(self, image: np.ndarray, boxes: Sequence[Sequence[float]]) -> np.ndarray:
        """Boolean masks ``[N, H, W]`` for ``N`` pixel boxes ``(x1, y1, x2, y2)`` on one uint8 image."""
        inputs = self.processor(images=image, input_boxes=[[list(map(float, b)) for b in boxes]], return_tensors="pt")
        outputs = self.model(
            pixel_values=inputs["pixel_values"].to(self.device),
            input_boxes=inputs["input_boxes"].to(self.device),
            multimask_output=False,  # one mask per box: the box is an unambiguous prompt
        )
        masks = self.processor.image_processor.post_process_masks(
            outputs.pred_masks.cpu(), inputs["original_sizes"], inputs["reshaped_input_sizes"]
        )[0]
        return masks[:, 0].numpy().astype(bool)

    def blobs(self, image: np.ndarray, boxes: Sequence[GroundedBox]) -> list[GroundedBlob]:
        height, width = image.shape[:2]
        source_grid = self.box_extractor.grid
        normalised = [tuple(v / source_grid for v in b.box) for b in boxes]
        pixel_boxes = [(x1 * width, y1 * height, x2 * width, y2 * height) for x1, y1, x2, y2 in normalised]
        masks = self.masks(image, pixel_boxes) if boxes else np.zeros((0, height, width), dtype=bool)
        blobs = []
        for box, unit_box, mask in zip(boxes, normalised, masks):
            region: Any = mask if mask.any() else box_mask(unit_box, height, width)
            ellipse = ellipse_from_mask(region, self.isotropy_tolerance)
            blobs.append(self.latent.from_normalised(box.phrase, ellipse))
        return blobs

    def __call__(self, images: Tensor, conditions: Sequence[str]) -> list[list[GroundedBlob]]:
        boxes = self.box_extractor(images, conditions)
        return [
            self.latent.canonical(self.blobs(image, found[: self.latent.max_objects]))
            for image, found in zip(to_uint8_images(images), boxes)
        ]


__all__ = ["BoxSource", "CaptionerTextExtractor", "DetectorBoxExtractor", "SamBlobExtractor"]
