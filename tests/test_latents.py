from collections import Counter
from importlib.metadata import EntryPoint

import pytest
import torch

from kaleido.latents import (
    LatentParseError,
    LatentType,
    TextLatent,
    available_latent_types,
    build_latent_type,
    latent_type_class,
    register_latent_type,
    registry,
)
from kaleido.nn.latent_conditioner import LatentConditioner
from kaleido.shapes import ShapesConfig, ShapesDataset, ShapesTextLatent, parse_description


def test_builtin_text_type_is_registered_with_its_origin() -> None:
    assert available_latent_types()["text"] == "kaleido.latents.text.TextLatent"
    assert latent_type_class("text") is TextLatent


def test_unknown_name_lists_what_is_registered() -> None:
    with pytest.raises(KeyError, match="unknown latent type 'boxes'.*registered: .*text"):
        latent_type_class("boxes")


def test_build_from_name_instance_and_class_path() -> None:
    spec = {"class_path": "kaleido.shapes.ShapesTextLatent", "init_args": {"max_chars": 300}}
    assert build_latent_type("text") == TextLatent()
    assert build_latent_type(spec) == ShapesTextLatent(max_chars=300) != TextLatent(max_chars=300)
    assert build_latent_type(ShapesTextLatent().spec()) == ShapesTextLatent()
    with pytest.raises(TypeError, match="cannot build latent type kaleido.latents.TextLatent .*'grammar'"):
        build_latent_type({"class_path": "kaleido.latents.TextLatent", "init_args": {"grammar": "shapes"}})
    with pytest.raises(ValueError, match="cannot import"):
        build_latent_type({"class_path": "no.such.Module"})
    with pytest.raises(TypeError, match="registered name"):
        build_latent_type(42)  # type: ignore[arg-type]


def test_a_second_class_cannot_take_a_registered_name() -> None:
    class Impostor(TextLatent):
        name = "text"

    with pytest.raises(ValueError, match="name 'text' is taken"):
        register_latent_type(Impostor)


def test_entry_point_plugins_are_discovered(monkeypatch: pytest.MonkeyPatch) -> None:
    class Counted(TextLatent):
        name = "counted_test_plugin"

    import sys
    import types

    module = types.ModuleType("fake_plugin_module")
    module.Counted = Counted  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_plugin_module", module)
    point = EntryPoint(name="counted_test_plugin", value="fake_plugin_module:Counted", group=registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry, "entry_points", lambda group: [point] if group == registry.ENTRY_POINT_GROUP else [])
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_ORIGIN", dict(registry._ORIGIN))
    assert "entry point fake_plugin_module:Counted" in available_latent_types()["counted_test_plugin"]
    assert isinstance(build_latent_type("counted_test_plugin"), Counted)


@pytest.mark.parametrize(
    ("text", "position", "expected"),
    [
        ("   ", 0, "non-empty"),
        ("a red <z:box> circle", 6, "special tokens are reserved"),
        ("a large magenta circle", 8, "colour"),
        ("a red circle at the moon", 20, "position"),
    ],
)
def test_text_parse_errors_name_the_position(text: str, position: int, expected: str) -> None:
    with pytest.raises(LatentParseError, match=expected) as error:
        ShapesTextLatent().parse(text)
    assert error.value.position == position
    assert f"at position {position}" in str(error.value)


def test_free_text_accepts_what_the_shapes_grammar_rejects() -> None:
    assert TextLatent().parse("  a magenta dodecahedron ") == "a magenta dodecahedron"
    with pytest.raises(LatentParseError, match="colour"):
        ShapesTextLatent().parse("a magenta dodecahedron")


def test_shapes_text_extractor_recovers_the_scene() -> None:
    """The analytic extractor reads back every object (shape, colour, size, position) and the background."""
    data = ShapesDataset(300, ShapesConfig(resolution=32))
    items = [data[i] for i in range(len(data))]
    texts = ShapesTextLatent().build_extractor()(
        torch.stack([item["image"] for item in items]), [item["condition"] for item in items]
    )

    def content(text: str) -> tuple:
        description = parse_description(text)
        return Counter(description.objects), description.background

    recovered = sum(content(text) == content(item["text"]) for text, item in zip(texts, items)) / len(items)
    assert recovered >= 0.98, recovered
    # The condition's shape comes first, as in the data.
    assert all(parse_description(t).objects[0].shape in item["condition"] for t, item in zip(texts, items))


class _Spy(LatentType):
    name = "spy_for_conditioner"

    def format(self, latent: str) -> str:
        return latent

    def parse(self, text: str) -> str:
        return text

    def build_encoder(self, hidden_size: int) -> torch.nn.Module:
        class AddOne(torch.nn.Module):
            def forward(self, hidden, token_ids, mask):  # type: ignore[no-untyped-def]
                return hidden + 1

        return AddOne()


def test_conditioner_routes_each_segment_to_its_type() -> None:
    conditioner = LatentConditioner([TextLatent(), _Spy()], {"text": 3, "spy_for_conditioner": 4}, hidden_size=2)
    ids = torch.tensor([[3, 10, 11, 4, 12, 1]])
    assert conditioner.segments(ids).tolist() == [[0, 0, 0, 1, 1, 1]]
    hidden = torch.zeros(1, 6, 2)
    out = conditioner(hidden, ids, torch.ones(1, 6, dtype=torch.bool))
    assert out[0, :3].eq(0).all() and out[0, 3:].eq(1).all()
