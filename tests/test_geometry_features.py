"""GLIGEN-style geometry features of the ``box`` and ``blob`` encoders (``fourier_frequencies``): spans,
per-token features aligned with the ids, the encoder, the conditioner, sampling and checkpoints."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import kaleido
from kaleido.__main__ import main
from kaleido.data.collate import Collate
from kaleido.latents import (
    BlobLatent,
    BoxLatent,
    FourierGeometryEncoder,
    LatentEncoder,
    LatentParseError,
    LatentType,
    TextLatent,
    build_latent_type,
)
from kaleido.nn.latent_conditioner import LatentConditioner
from kaleido.shapes import ShapesConfig, ShapesDataModule, ShapesDataset, ShapesTextLatent, ground_truth
from kaleido.tokenizer import KaleidoTokenizer
from tests.conftest import tiny_model_kwargs
from tests.test_latent_box_blob import latents
from tests.test_latents import _Spy as _PlainEncoderType  # a plugin with the three-argument encoder contract

ROOT = Path(__file__).resolve().parents[1]
BOX_TEXT = "red circle (12, 40, 30, 58); blue square (61, 9, 88, 36)"
BLOB_TEXT = "red circle (21, 49, 9, 9, 0); blue bar (74, 22, 18, 4, 135)"


def datamodule(*types: LatentType) -> ShapesDataModule:
    """conftest's tiny shapes data (``tiny_datamodule`` takes no latent types), one object a scene."""
    shapes = ShapesConfig(resolution=16, max_objects=1)
    return ShapesDataModule(list(types), shapes, num_train=64, num_val=8, num_test=8, batch_size=4)


def expected_geometry(latent: BoxLatent | BlobLatent, obj: object) -> tuple[float, ...]:
    """The documented vectors, written out independently of ``geometry``."""
    if isinstance(latent, BoxLatent):
        return latent.to_normalised(obj)  # type: ignore[arg-type]
    cx, cy, a, b, theta = latent.to_normalised(obj)  # type: ignore[arg-type]
    return (cx, cy, a, b, math.cos(math.radians(2 * theta)), math.sin(math.radians(2 * theta)))


# -- the latent types ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["box", "blob"])
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_geometry_spans_cover_each_object_and_give_its_vector(kind: str, data: st.DataObject) -> None:
    latent, objects = data.draw(latents(kind))
    text = latent.format(objects)
    spans = latent.geometry_spans(text)
    canonical = latent.canonical(objects)
    assert len(spans) == len(canonical)
    for (start, end, vector), obj in zip(spans, canonical):
        assert text[start:end] == latent.format([obj])  # the phrase up to its ')'
        assert vector == pytest.approx(expected_geometry(latent, obj))
        assert len(vector) == len(latent.geometry_names)
    assert all(text[end : next_start] == "; " for (_, end, _), (next_start, _, _) in zip(spans, spans[1:]))


def test_spans_follow_the_text_as_written() -> None:
    text = "  red circle( 1 ,2,3 , 4 ) ;blue x (0,0,10,10)  "
    spans = BoxLatent(grid=10).geometry_spans(text)
    assert [text[a:b] for a, b, _ in spans] == ["red circle( 1 ,2,3 , 4 )", "blue x (0,0,10,10)"]
    assert spans[1][2] == (0.0, 0.0, 1.0, 1.0)
    with pytest.raises(LatentParseError, match="at position 16"):
        BoxLatent().geometry_spans("red circle (1, 2")


def test_blob_angle_features_have_period_180_degrees() -> None:
    blob = BlobLatent(grid=100)
    near = [blob.geometry_spans(f"bar (50, 50, 40, 10, {theta})")[0][2] for theta in (179, 0, 1)]
    assert near[1] == (0.5, 0.5, 0.4, 0.1, 1.0, 0.0)
    # 179° and 1° are 2° apart on screen; their features are close, although θ itself jumps.
    assert math.dist(near[0], near[1]) < 0.04 and math.dist(near[1], near[2]) < 0.04


@pytest.mark.parametrize("cls", [BoxLatent, BlobLatent])
def test_fourier_frequencies_is_an_init_arg_and_is_validated(cls: type) -> None:
    latent = cls(grid=100, fourier_frequencies=6)
    assert latent.init_args()["fourier_frequencies"] == 6 and latent.geometry_width() == len(cls.geometry_names)
    assert build_latent_type(latent.spec()) == latent != cls(grid=100)
    assert cls().geometry_width() == 0 and isinstance(cls().build_encoder(8), LatentEncoder)
    assert not isinstance(cls().build_encoder(8), FourierGeometryEncoder)  # off by default: the paper's encoder
    for bad in (-1, 1.5, True, 17, "8"):
        with pytest.raises(ValueError, match="fourier_frequencies must be an int in 0..16"):
            cls(fourier_frequencies=bad)
    scene = ShapesDataset(1, ShapesConfig(resolution=16)).scene(0)
    assert ground_truth(scene, latent) == ground_truth(scene, cls(grid=100))  # the features change no latent


# -- the tokenizer -------------------------------------------------------------------------------------
def tokenizer_for(*types: LatentType) -> KaleidoTokenizer:
    corpus = [BOX_TEXT, BLOB_TEXT, "a large red circle in the center", "é漢 x (1, 2, 3, 4)"]
    return KaleidoTokenizer.train(corpus, types, vocab_size=320)


def check_alignment(tok: KaleidoTokenizer, texts: dict[str, str], ids: torch.Tensor, geometry: torch.Tensor) -> None:
    """Walk the row segment by segment: every token inside an object's span carries that object's
    vector and flag 1, tokens that touch no object (and tags, ``</s>``, padding) are all zero."""
    width = tok.geometry_width
    assert geometry.shape == (*ids.shape, width + 1)
    position = 0
    for latent_type in tok.latent_types:
        text = texts[latent_type.name]
        assert ids[position] == tok.tag_ids[latent_type.name] and not geometry[position].any()
        encoding = tok.tokenizer.encode(text, add_special_tokens=False)
        position += 1
        assert ids[position : position + len(encoding.ids)].tolist() == encoding.ids
        spans = latent_type.geometry_spans(text) if latent_type.geometry_width() else []
        for (start, end), row in zip(encoding.offsets, geometry[position : position + len(encoding.ids)]):
            inside = [v for a, b, v in spans if a <= start and end <= b]
            touching = [v for a, b, v in spans if start < b and a < end]
            if inside:
                want = torch.tensor([*inside[0], *[0.0] * (width - len(inside[0])), 1.0])
                torch.testing.assert_close(row, want)
            elif not touching:
                assert not row.any()
        position += len(encoding.ids)
    assert ids[position] == tok.eos_id and not geometry[position:].any()


@pytest.mark.parametrize(
    "types",
    [
        (BoxLatent(grid=100, fourier_frequencies=4),),
        (BlobLatent(grid=100, fourier_frequencies=4),),
        (TextLatent(), BoxLatent(grid=100, fourier_frequencies=4)),
        (TextLatent(), BoxLatent(grid=100, fourier_frequencies=4), BlobLatent(grid=100, fourier_frequencies=2)),
        (BoxLatent(grid=100, fourier_frequencies=4), BlobLatent(grid=100)),  # only one type uses geometry
    ],
    ids=["box", "blob", "text|box", "text|box|blob", "box|blob-off"],
)
def test_token_features_align_with_the_ids(types: tuple[LatentType, ...]) -> None:
    tok = tokenizer_for(*types)
    full = {"text": "a large red circle", "box": BOX_TEXT, "blob": BLOB_TEXT}
    empty = {"text": "x", "box": "", "blob": ""}
    wide_characters = {**full, "box": "é漢 x (1, 2, 3, 4)"}  # several tokens share characters
    rows = [{t.name: texts[t.name] for t in types} for texts in (full, empty, wide_characters)]
    loose = tok.latent_batch(rows)
    static = tok.latent_batch(rows, length=90)
    assert static["latent_geometry"].shape == (len(rows), 90, tok.geometry_width + 1)
    width = loose["latent_ids"].shape[1]
    for key in loose:
        assert torch.equal(static[key][:, :width], loose[key])
    assert not static["latent_geometry"][:, width:].any()
    for row, texts in enumerate(rows):
        assert loose["latent_ids"][row][loose["latent_mask"][row]].tolist() == tok.encode_latent_texts(texts)
        check_alignment(tok, texts, static["latent_ids"][row], static["latent_geometry"][row])
    assert loose["latent_geometry"][0, :, -1].sum() > 10  # the check above did see objects


def test_no_geometry_without_fourier_features() -> None:
    tok = tokenizer_for(TextLatent(), BoxLatent(), BlobLatent())
    assert tok.geometry_width == 0
    assert set(tok.latent_batch([{"text": "x", "box": BOX_TEXT, "blob": BLOB_TEXT}])) == {"latent_ids", "latent_mask"}


def test_a_sampled_latent_that_does_not_parse_gets_no_geometry() -> None:
    tok = tokenizer_for(TextLatent(), BoxLatent(grid=100, fourier_frequencies=4))
    rows = [{"text": "x", "box": "red circle (12, 40"}, {"text": "x", "box": BOX_TEXT}]
    with pytest.raises(LatentParseError):
        tok.latent_batch(rows)
    batch = tok.latent_batch(rows, sampled=[True, True])
    assert not batch["latent_geometry"][0].any() and batch["latent_geometry"][1, :, -1].any()


def test_collate_adds_the_geometry_to_the_batch(text_data) -> None:  # type: ignore[no-untyped-def]
    data = datamodule(ShapesTextLatent(), BoxLatent(grid=100, fourier_frequencies=4))
    items = [data.dataset("train")[i] for i in range(4)]
    for static in (False, True):
        batch = Collate(data.tokenizer, pad_to_limits=static)(items)
        assert batch["latent_geometry"].shape == (*batch["latent_ids"].shape, 5)
        assert batch["latent_geometry"][..., -1].sum(1).gt(0).all()  # every scene has an object
    text_only = [{**item, "latents": {"text": item["latents"]["text"]}} for item in items]
    assert "latent_geometry" not in Collate(text_data.tokenizer)(text_only)


# -- the encoder and the conditioner ---------------------------------------------------------------
def test_the_fourier_encoder_starts_as_the_identity_and_learns() -> None:
    torch.manual_seed(0)
    encoder = BlobLatent(fourier_frequencies=3).build_encoder(16)
    assert isinstance(encoder, FourierGeometryEncoder)
    hidden, ids, mask = torch.randn(2, 5, 16), torch.zeros(2, 5, dtype=torch.long), torch.ones(2, 5, dtype=torch.bool)
    geometry = torch.rand(2, 5, 7)
    geometry[..., -1] = torch.tensor([[1, 1, 0, 1, 0], [0, 0, 0, 0, 0]])
    assert torch.equal(encoder(hidden, ids, mask, geometry=geometry), hidden)
    with torch.no_grad():
        encoder.mlp[-1].weight.normal_()
    out = encoder(hidden, ids, mask, geometry=geometry)
    changed = (out != hidden).any(-1)
    assert changed.tolist() == [[True, True, False, True, False], [False] * 5]  # only tokens of objects
    with pytest.raises(ValueError, match=r"\[B, L, 7\]"):
        encoder(hidden, ids, mask)


def test_the_conditioner_gives_each_geometry_type_its_slice() -> None:
    box, blob = BoxLatent(fourier_frequencies=2), BlobLatent(fourier_frequencies=2)
    conditioner = LatentConditioner([_PlainEncoderType(), box, blob], {_PlainEncoderType.name: 3, "box": 4, "blob": 5}, 4)
    seen: dict[str, torch.Tensor] = {}
    for name in ("box", "blob"):
        conditioner.encoders[name].register_forward_hook(
            lambda module, args, kwargs, out, name=name: seen.update({name: kwargs["geometry"]}), with_kwargs=True
        )
    ids = torch.tensor([[3, 10, 4, 11, 5, 12, 1]])
    geometry = torch.arange(7 * 7, dtype=torch.float32).reshape(1, 7, 7)
    out = conditioner(torch.zeros(1, 7, 4), ids, torch.ones(1, 7, dtype=torch.bool), geometry)
    assert out[0, :2].eq(1).all() and out[0, 2:].eq(0).all()  # plain encoder: +1; fourier encoders: identity at init
    torch.testing.assert_close(seen["box"], torch.cat([geometry[..., :4], geometry[..., 6:]], -1))
    torch.testing.assert_close(seen["blob"], geometry)
    with pytest.raises(ValueError, match="'box' uses geometry features"):
        conditioner(torch.zeros(1, 7, 4), ids, torch.ones(1, 7, dtype=torch.bool))


# -- the model: training, sampling, checkpoints -----------------------------------------------------------
@pytest.fixture(scope="module")
def box_data():  # type: ignore[no-untyped-def]
    return datamodule(BoxLatent(grid=100, fourier_frequencies=4))


def test_fit_save_load_and_generate_with_fourier_features(box_data, tmp_path, single_thread) -> None:  # type: ignore[no-untyped-def]
    from tests.test_models import _fit

    torch.manual_seed(0)
    model = kaleido.Kaleido(tokenizer=box_data.tokenizer, **tiny_model_kwargs())
    assert isinstance(model.latent_conditioner.encoders["box"], FourierGeometryEncoder)
    path = _fit(model, box_data, tmp_path, steps=3)
    assert model.latent_conditioner.encoders["box"].mlp[-1].weight.abs().sum() > 0  # the diffusion loss reaches it
    loaded = kaleido.load(path)
    assert loaded.tokenizer.latent_types == [BoxLatent(grid=100, fourier_frequencies=4)]
    for (name, p), q in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(p, q), name
    given_z = "red circle (20, 30, 60, 70)"
    a = model.generate(["a circle", "a circle"], latents=[given_z, None], seed=1)
    b = loaded.generate(["a circle", "a circle"], latents=[given_z, None], seed=1)
    assert torch.allclose(a.images, b.images, atol=1e-6) and a.latent_texts == b.latent_texts
    assert a.latent_texts[0] == given_z  # the second z is sampled: from a tiny prior it rarely parses, and must not crash
    with pytest.raises(LatentParseError, match="at position 18"):
        loaded.generate(["a circle"], latents=["red circle (20, 30"])


def test_sampling_re_encodes_a_sampled_latent_canonically(box_data, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import kaleido.modules.kaleido as module

    torch.manual_seed(0)
    model = kaleido.Kaleido(tokenizer=box_data.tokenizer, **tiny_model_kwargs()).eval()
    with torch.no_grad():
        model.latent_conditioner.encoders["box"].mlp[-1].weight.normal_()
    tok = model.tokenizer
    text = "red circle (20, 30, 60, 70)"
    # The prior's tokens for this text, one character at a time: decodes to the text, but not canonical.
    odd = [tok.tag_ids["box"], *(tok.tokenizer.token_to_id(c.replace(" ", "Ġ")) for c in text), tok.eos_id]
    assert None not in odd and odd != tok.encode_latent_texts({"box": text})

    def sample(ids: list[int]) -> tuple:
        fake = torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.bool)
        monkeypatch.setattr(module, "sample_latent_ids", lambda *args, **kwargs: fake)
        return model.sampling_conditioning(["a circle"], None, seed=0)

    cond, texts = sample(odd)
    reference, given_texts = model.sampling_conditioning(["a circle"], [text], seed=0)
    assert texts == given_texts == [text]
    torch.testing.assert_close(cond.states, reference.states)
    # A sampled z that does not parse: sampling goes on, its tokens without geometry.
    broken = tok.tokenizer.encode("red circle (20, 3", add_special_tokens=False).ids
    assert sample([tok.tag_ids["box"], *broken, tok.eos_id])[1] == ["red circle (20, 3"]


def test_the_cli_reads_fourier_frequencies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = yaml.safe_load((ROOT / "tests/configs/tiny_kaleido.yaml").read_text())
    config["data"]["init_args"]["latents"] = [
        {"class_path": "kaleido.latents.BoxLatent", "init_args": {"grid": 100, "fourier_frequencies": 8}}
    ]
    (tmp_path / "box.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(tmp_path / "box.yaml"), "--print_config"])
    assert "fourier_frequencies: 8" in capsys.readouterr().out
