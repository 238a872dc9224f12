"""Model-backed extractors, on tiny randomly initialised models saved to a temp dir and loaded back
through the same local-path code a user runs. Nothing is downloaded: the hub is offline and sockets
refuse to connect while these tests run."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch

from kaleido.extract import extract
from kaleido.latents import TextLatent
from kaleido.latents.blob import BlobLatent, GroundedBlob
from kaleido.latents.box import BoxLatent, GroundedBox
from kaleido.latents.extractors import CaptionerTextExtractor, DetectorBoxExtractor, SamBlobExtractor
from kaleido.shapes import ShapesConfig, ShapesDataModule, ShapesDataset
from kaleido.shapes.latents import box_extractor

LABELS = {0: "circle", 1: "square", 2: "traffic light (red)"}
SAM_IMAGE = 64  # the tiny SAM's input side; the processor pads every image to it


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network access in an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture(scope="module")
def detector_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import DetrConfig, DetrForObjectDetection, DetrImageProcessor, ResNetConfig

    backbone = ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", out_features=["stage1", "stage2"]
    )
    config = DetrConfig(
        backbone_config=backbone,  # a transformers ResNet: no timm, no pretrained weights
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        num_queries=6,
        id2label=LABELS,
        label2id={v: k for k, v in LABELS.items()},
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("detr")
    DetrForObjectDetection(config).save_pretrained(path)
    DetrImageProcessor(size={"shortest_edge": 32, "longest_edge": 64}).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def sam_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import (
        SamConfig,
        SamImageProcessor,
        SamMaskDecoderConfig,
        SamModel,
        SamProcessor,
        SamPromptEncoderConfig,
        SamVisionConfig,
    )

    vision = SamVisionConfig(
        hidden_size=16,
        output_channels=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=SAM_IMAGE,
        patch_size=8,
        window_size=4,
        global_attn_indexes=[0],
        num_pos_feats=8,
        mlp_dim=32,
    )
    prompt = SamPromptEncoderConfig(hidden_size=16, image_size=SAM_IMAGE, patch_size=8, mask_input_channels=4)
    decoder = SamMaskDecoderConfig(
        hidden_size=16, mlp_dim=32, num_hidden_layers=1, num_attention_heads=2, iou_head_hidden_dim=16
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("sam")
    SamModel(
        SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)
    ).save_pretrained(path)
    processor = SamImageProcessor(size={"longest_edge": SAM_IMAGE}, pad_size={"height": SAM_IMAGE, "width": SAM_IMAGE})
    SamProcessor(image_processor=processor).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def images() -> tuple[torch.Tensor, list[str]]:
    data = ShapesDataset(2, ShapesConfig(resolution=32), seed=3)
    items = [data[i] for i in range(2)]
    return torch.stack([i["image"] for i in items]), [i["condition"] for i in items]


def assert_boxes(found: list, latent: BoxLatent, phrases: set[str]) -> None:
    assert all(isinstance(b, GroundedBox) for b in found) and len(found) <= latent.max_objects
    assert all(b.phrase in phrases for b in found)
    assert all(0 <= b.box[0] <= b.box[2] <= latent.grid and 0 <= b.box[1] <= b.box[3] <= latent.grid for b in found)
    assert latent.parse(latent.format(found)) == found  # valid and already canonical (raster order)


def assert_blobs(found: list, latent: BlobLatent) -> None:
    assert all(isinstance(b, GroundedBlob) for b in found) and len(found) <= latent.max_objects
    for cx, cy, a, b, theta in (blob.ellipse for blob in found):
        assert 0 <= cx <= latent.grid and 0 <= cy <= latent.grid and 0 <= b <= a <= latent.grid and 0 <= theta < 180
    assert latent.parse(latent.format(found)) == found


def test_detector_extractor_loads_locally_and_gives_box_latents(detector_dir: Path, images: tuple) -> None:
    extractor = DetectorBoxExtractor(str(detector_dir), threshold=0.0, grid=100, max_objects=4)
    latents = extractor(*images)
    assert len(latents) == 2
    assert all(len(found) == 4 for found in latents)  # threshold 0: every query is a detection; 4 kept
    for found in latents:
        # "traffic light (red)" is cleaned into a phrase the grammar accepts.
        assert_boxes(found, BoxLatent(grid=100, max_objects=4), {"circle", "square", "traffic light red"})


def test_detector_extractor_filters_labels_and_threshold(detector_dir: Path, images: tuple) -> None:
    only = DetectorBoxExtractor(str(detector_dir), labels=["square"], threshold=0.0)
    assert all(b.phrase == "square" for found in only(*images) for b in found)
    none = DetectorBoxExtractor(str(detector_dir), threshold=1.0)  # softmax scores never exceed 1
    assert none(*images) == [[], []] and BoxLatent().format([]) == ""
    with pytest.raises(ValueError, match="not classes"):
        DetectorBoxExtractor(str(detector_dir), labels=["giraffe"])


def test_missing_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        DetectorBoxExtractor(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="SAM checkpoint"):
        SamBlobExtractor(str(tmp_path), box_extractor(BoxLatent()))


def test_sam_extractor_turns_detector_boxes_into_blobs(detector_dir: Path, sam_dir: Path, images: tuple) -> None:
    boxes = DetectorBoxExtractor(str(detector_dir), threshold=0.0, max_objects=3)
    extractor = SamBlobExtractor(str(sam_dir), boxes, grid=500)
    latents = extractor(*images)
    expected = boxes(*images)
    assert [len(found) for found in latents] == [len(found) for found in expected] == [3, 3]  # one blob per box
    for found, source in zip(latents, expected):
        assert_blobs(found, BlobLatent(grid=500))
        assert sorted(b.phrase for b in found) == sorted(b.phrase for b in source)


def test_extract_s_device_moves_the_models(detector_dir: Path, sam_dir: Path) -> None:
    """`extract --device` (cuda:LOCAL_RANK under torchrun) calls `.to`: SAM and its detector both move."""
    boxes = DetectorBoxExtractor(str(detector_dir))
    extractor = SamBlobExtractor(str(sam_dir), boxes)
    assert extractor.to("meta") is extractor and extractor.device == boxes.device == "meta"
    assert {p.device.type for p in [*extractor.model.parameters(), *boxes.model.parameters()]} == {"meta"}


def test_sam_extractor_with_analytic_boxes(sam_dir: Path, images: tuple) -> None:
    boxes = box_extractor(BoxLatent(grid=1000))  # the shapes data set's analytic boxes
    latents = SamBlobExtractor(str(sam_dir), boxes, order="given")(*images)
    for found, source in zip(latents, boxes(*images)):
        assert [b.phrase for b in found] == [b.phrase for b in source]  # "given" keeps the boxes' order
        assert_blobs(found, BlobLatent(order="given"))


def test_sam_extractor_needs_a_box_extractor(sam_dir: Path) -> None:
    with pytest.raises(TypeError, match="grid"):
        SamBlobExtractor(str(sam_dir), lambda images, conditions: [])  # type: ignore[arg-type]


def test_sam_masks_and_the_empty_mask_fallback(sam_dir: Path, images: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    extractor = SamBlobExtractor(str(sam_dir), box_extractor(BoxLatent(grid=32)), grid=32)
    image = (images[0][0].permute(1, 2, 0).add(1).mul(127.5)).round().byte().numpy()
    masks = extractor.masks(image, [(2.0, 3.0, 20.0, 25.0), (0.0, 0.0, 31.0, 31.0)])
    assert masks.shape == (2, 32, 32) and masks.dtype == bool
    # An empty mask falls back to the ellipse of the box: the box (8, 8)-(24, 16) on a 32 grid.
    monkeypatch.setattr(
        extractor, "masks", lambda image, boxes: torch.zeros(len(boxes), 32, 32, dtype=torch.bool).numpy()
    )
    blob = extractor.blobs(image, [GroundedBox("thing", (8, 8, 24, 16))])[0]
    # A filled 16 x 8 px rectangle: a = 2 sqrt(16^2 / 12) = 9.2 px, b = 4.6 px, along x.
    assert blob.phrase == "thing" and blob.ellipse == (16, 12, 9, 5, 0)


# -- the captioner (text latent) -----------------------------------------------------------------------
WORDS = [
    "<pad>",
    "<s>",
    "</s>",
    "<unk>",
    "[SEP]",
    "a",
    "an",
    "circle",
    "square",
    "triangle",
    "red",
    "blue",
    "small",
    "large",
    "on",
    "the",
    "left",
    "right",
    "of",
    "black",
    "background",
]
PAD, BOS, EOS, SEP = 0, 1, 2, 4
# Far from transformers' 0.02: a random model then reads the image, so captions differ between
# images and the batching test compares different outputs, not one repeated caption.
INIT = 1.0


def save_tokenizer(path: Path) -> None:
    """A word-level tokenizer built locally (``tokenizers``), saved as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(
        tokenizer_object=words,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        sep_token="[SEP]",
    ).save_pretrained(path)


@pytest.fixture(scope="module", params=["vision-encoder-decoder", "blip"])
def captioner_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import (
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        GPT2Config,
        VisionEncoderDecoderConfig,
        VisionEncoderDecoderModel,
        ViTConfig,
        ViTImageProcessor,
    )

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp(request.param)
    vision = dict(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        initializer_range=INIT,
    )
    if request.param == "blip":
        text = dict(
            vocab_size=len(WORDS),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            encoder_hidden_size=16,
            max_position_embeddings=128,
            initializer_range=INIT,
            bos_token_id=BOS,
            eos_token_id=EOS,
            sep_token_id=SEP,
            pad_token_id=PAD,
        )
        model = BlipForConditionalGeneration(BlipConfig(vision_config=vision, text_config=text, initializer_range=INIT))
        BlipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    else:
        decoder = GPT2Config(
            vocab_size=len(WORDS),
            n_embd=16,
            n_layer=1,
            n_head=2,
            n_positions=128,
            initializer_range=INIT,
            bos_token_id=BOS,
            eos_token_id=EOS,
            pad_token_id=PAD,
        )
        config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(ViTConfig(**vision), decoder)
        config.decoder_start_token_id, config.pad_token_id, config.eos_token_id = BOS, PAD, EOS
        model = VisionEncoderDecoderModel(config)
        model.generation_config.update(decoder_start_token_id=BOS, pad_token_id=PAD, eos_token_id=EOS)
        ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    model.save_pretrained(path)
    save_tokenizer(path)
    return path


@pytest.fixture(scope="module")
def caption_images() -> tuple[torch.Tensor, list[str]]:
    data = ShapesDataset(5, ShapesConfig(resolution=32), seed=5)
    conditions = ["a circle", "a red square", "a triangle", "a small blue circle on the left", "a circle"]
    return torch.stack([data[i]["image"] for i in range(5)]), conditions


def test_captioner_is_prompted_with_the_condition(captioner_dir: Path, caption_images: tuple) -> None:
    images, conditions = caption_images
    captions = CaptionerTextExtractor(str(captioner_dir), max_new_tokens=6)(images, conditions)
    assert len(captions) == 5 and all(isinstance(c, str) for c in captions)
    assert all(c == condition or c.startswith(condition + " ") for c, condition in zip(captions, conditions)), captions
    latent = TextLatent()
    assert [latent.format(c) for c in captions] == captions  # valid, canonical text latents
    unprompted = CaptionerTextExtractor(str(captioner_dir), prompt=None, max_new_tokens=6)(images, conditions)
    assert all(isinstance(c, str) for c in unprompted) and unprompted != captions
    assert len(set(unprompted)) > 1, unprompted  # the caption reads the image
    framed = CaptionerTextExtractor(str(captioner_dir), prompt="the {condition} on the left", max_new_tokens=2)
    assert framed(images[:1], ["black circle"])[0].startswith("the black circle on the left")


def test_captioner_batches_give_what_one_image_at_a_time_gives(captioner_dir: Path, caption_images: tuple) -> None:
    images, conditions = caption_images
    extractor = CaptionerTextExtractor(str(captioner_dir), max_new_tokens=6, batch_size=2)
    one_by_one = [extractor(images[i : i + 1], [c])[0] for i, c in enumerate(conditions)]
    extractor.batch_size = 8
    assert extractor(images, conditions) == one_by_one
    assert extractor(images.flip(0), conditions[::-1]) == one_by_one[::-1]  # order restored across length groups


def test_captioner_fills_a_text_sidecar_through_extract(captioner_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(NotImplementedError, match="CaptionerTextExtractor"):
        TextLatent().build_extractor()
    extractor = CaptionerTextExtractor(str(captioner_dir), max_new_tokens=4)
    data = ShapesDataModule(shapes=ShapesConfig(resolution=32), num_train=8, num_val=3, num_test=2)
    path = extract("text", data=data, split="val", output=tmp_path, extractor=extractor, progress=False)
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and all('"latent": "a ' in line for line in lines)  # conditions are "a <shape>"


def test_captioner_needs_a_local_checkpoint_and_a_valid_prompt(captioner_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="captioner checkpoint"):
        CaptionerTextExtractor(str(tmp_path))
    with pytest.raises(KeyError):
        CaptionerTextExtractor(str(captioner_dir), prompt="{caption}")
