"""Fuzzing what reads user-edited text: every built-in latent type's ``parse`` and the image folder's
``metadata.jsonl`` / sidecar readers meet arbitrary text and bytes with only their documented errors
(LatentParseError; FolderDataError), and what parses formats back to text that parses to the same."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from kaleido.data.folder_format import METADATA, FolderDataError, read_metadata, read_sidecar
from kaleido.latents import BlobLatent, BoxLatent, LatentParseError, LatentType, TextLatent, VisualTokenLatent
from kaleido.shapes import ShapesTextLatent

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

TYPES: list[LatentType] = [
    TextLatent(max_chars=60), ShapesTextLatent(), BoxLatent(), BlobLatent(), VisualTokenLatent(codebook_size=16, num_tokens=3),
]
# Pieces of every grammar, so that the fuzzer reaches past the first character of each parser.
PIECES = [
    "a", " ", "large", "small", "red", "blue", "circle", "square", "at the", "top", "left", "center", ",", ";",
    "on a", "white", "background", "(", ")", "1", "0", "9", "63", "64", "-", "+", ".", "e", "#", "<v", ">", "<v3>",
    "<z:", "</s>", "\n", "\t", "\u00a0", "\u3000", "\x00", "é", "１", "٣", "cat",
]
TEXTS = st.one_of(st.text(max_size=80), st.lists(st.sampled_from(PIECES), max_size=25).map("".join))


@pytest.mark.parametrize("latent_type", TYPES, ids=lambda t: type(t).__name__)
@FAST
@given(text=TEXTS)
@example(text="a large red circle in the center, on a white background")
@example(text="cat (1, 2, 3, 4); dog (5, 6, 7, 8)")
@example(text="<v1>#<v2>#3")
@example(text="  cat (1,2,3,4)  ")
def test_parse_meets_any_text_with_a_latent_parse_error_only(latent_type: LatentType, text: str) -> None:
    try:
        latent = latent_type.parse(text)
    except LatentParseError as error:
        assert str(error).startswith(f"{latent_type.name} latent does not parse: expected ")
        assert 0 <= error.position <= len(error.text)
        return
    formatted = latent_type.format(latent)
    assert latent_type.format(latent_type.parse(formatted)) == formatted  # what parses writes back stably


@pytest.mark.parametrize("latent_type", TYPES, ids=lambda t: type(t).__name__)
def test_parse_names_the_type_it_wants_for_non_text(latent_type: LatentType) -> None:
    for value in (b"cat (1, 2, 3, 4)", None, 3):
        with pytest.raises(TypeError, match="str, got"):
            latent_type.parse(value)  # type: ignore[arg-type]


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
FIELD = st.text(max_size=6) | JSON_VALUES  # mostly well-typed, often not
RECORDS = st.fixed_dictionaries(
    {}, optional={"file_name": FIELD, "caption": FIELD, "label": FIELD, "id": FIELD, "latent": FIELD, "x": FIELD}
)
LINES = st.one_of(
    st.binary(max_size=60),
    RECORDS.map(lambda r: json.dumps(r).encode()),
    st.text(max_size=40).map(lambda s: s.encode("utf-8", "surrogatepass")),
)
FILES = st.lists(LINES, max_size=6).map(lambda lines: b"\n".join(lines)) | st.binary(max_size=200)


# Found by this fuzzing in kaleido/data/folder_format.py, and fixed: invalid UTF-8 in metadata.jsonl raised
# UnicodeDecodeError, a template indexing a field that cannot be indexed raised TypeError, and a sidecar "id"
# that is a JSON list or object raised TypeError (unhashable).
KNOWN = [
    (METADATA, b'{"file_name": "a.png", "caption": "a cat"}\n\xff\xfe\n', "{label}"),
    (METADATA, b'{"file_name": "a.png", "label": 3}\n', "{label[0]}"),
    ("text.jsonl", b'{"id": ["a"], "latent": "cat"}\n', ""),
]


@pytest.mark.parametrize(("name", "content", "template"), KNOWN)
def test_the_known_reader_errors_become_folder_data_errors(tmp_path: Path, name: str, content: bytes, template: str) -> None:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(FolderDataError, match="line 1|line 2"):
        read_metadata(tmp_path, template) if name == METADATA else read_sidecar(tmp_path / name)


@FAST
@given(content=FILES, template=st.sampled_from(["{label}", "a photo of a {label}", "{x}", "{label[0]}"]))
def test_read_metadata_meets_any_bytes_with_a_folder_data_error_only(tmp_path: Path, content: bytes, template: str) -> None:
    (tmp_path / METADATA).write_bytes(content)
    try:
        records = read_metadata(tmp_path, template)
    except FolderDataError as error:
        assert str(error).startswith(str(tmp_path / METADATA)) and "\n" not in str(error)
        return
    assert records and all(isinstance(r.file_name, str) and r.condition.strip() for r in records)


@FAST
@given(content=FILES)
def test_read_sidecar_meets_any_bytes_with_a_folder_data_error_only(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "text.jsonl"
    path.write_bytes(content)
    try:
        sidecar = read_sidecar(path)
    except FolderDataError as error:
        assert str(error).startswith(f"{path}, line ")
        return
    assert 0 <= sidecar.good_bytes <= len(content)
    assert all(isinstance(text, str) for _, text in sidecar.latents.values())


def test_a_json_error_names_its_line_and_the_column_a_person_counts(tmp_path: Path) -> None:
    line = '{"file_name": "é.png", "caption": x}'  # non-ASCII before the fault: columns count characters
    (tmp_path / METADATA).write_text('{"file_name": "a.png", "caption": "a"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(FolderDataError, match=rf"line 2: not valid JSON \(Expecting value at column {line.index('x') + 1}\)"):
        read_metadata(tmp_path)
