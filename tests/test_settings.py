"""params.yaml validation: the repo's file loads, and every typo or bad value fails naming its key."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from storyboard.settings import Settings, SettingsError, load_settings

REPO_PARAMS = Path(__file__).parents[1] / "params.yaml"


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return yaml.safe_load(REPO_PARAMS.read_text(encoding="utf-8"))


def _write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def _set(data: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """A deep copy of `data` with the value at `dotted` (e.g. "caption.openai.model") replaced or added."""
    out = copy.deepcopy(data)
    *parents, leaf = dotted.split(".")
    node = out
    for key in parents:
        node = node[key]
    node[leaf] = value
    return out


def _error(tmp_path: Path, data: dict[str, Any]) -> str:
    path = _write(tmp_path, data)
    with pytest.raises(SettingsError) as exc:
        load_settings(path)
    message = str(exc.value)
    assert str(path) in message, "the message names the file"
    return message


def test_repo_params_load() -> None:
    settings = load_settings(REPO_PARAMS)
    assert isinstance(settings, Settings)
    # `make tiny` (dvc exp run -S profile=tiny ...) rewrites params.yaml in the workspace, so either profile may
    # be there; the default when the key is absent is checked below.
    assert settings.is_tiny == (settings.profile == "tiny")
    assert len(settings.stories) >= 3
    ids = [s.id for s in settings.stories]
    assert len(set(ids)) == len(ids)
    assert settings.caption.background == (255, 255, 255)
    assert "{trigger}" in settings.caption.template


def test_profile_defaults_to_sdxl(tmp_path: Path, raw: dict[str, Any]) -> None:
    data = copy.deepcopy(raw)
    data.pop("profile", None)
    settings = load_settings(_write(tmp_path, data))
    assert settings.profile == "sdxl" and not settings.is_tiny
    assert Settings.model_fields["profile"].default == "sdxl"


def test_copy_written_with_safe_dump_still_loads(tmp_path: Path, raw: dict[str, Any]) -> None:
    assert load_settings(_write(tmp_path, raw)) == load_settings(REPO_PARAMS)


@pytest.mark.parametrize(
    "dotted",
    [
        "tpyo",  # top level
        "train.rnak",  # a section
        "caption.openai.xyz",  # nested inside a section
        "models.sdxl.extra_model",
        "runtime.devcie",
    ],
)
def test_unknown_key_names_full_dotted_key(tmp_path: Path, raw: dict[str, Any], dotted: str) -> None:
    message = _error(tmp_path, _set(raw, dotted, 1))
    assert f"{dotted}: unknown key" in message


def test_unknown_key_in_a_story(tmp_path: Path, raw: dict[str, Any]) -> None:
    data = copy.deepcopy(raw)
    data["stories"][1]["titel"] = "x"
    assert "stories.1.titel: unknown key" in _error(tmp_path, data)


def test_every_bad_key_is_reported_at_once(tmp_path: Path, raw: dict[str, Any]) -> None:
    data = _set(_set(raw, "train.rank", -1), "generate.bogus", True)
    message = _error(tmp_path, data)
    assert "2 bad value(s)" in message
    assert "train.rank" in message and "generate.bogus: unknown key" in message


@pytest.mark.parametrize(
    ("dotted", "value", "expected"),
    [
        ("train.rank", -1, ["train.rank", "greater than 0", "-1"]),
        ("train.rank", 0, ["train.rank", "greater than 0"]),
        ("generate.resolution", 100, ["generate.resolution", "multiple of 8", "100"]),
        ("train.resolution", 1020, ["train.resolution", "multiple of 8"]),
        ("caption.template", "{name}, a character", ["caption.template", "{trigger}"]),
        ("profile", "huge", ["profile", "'huge'"]),
        ("character.trigger", "aldar kose", ["character.trigger", "pattern", "'aldar kose'"]),
        ("character.trigger", "Aldar", ["character.trigger"]),
        ("train.dropout", 1.5, ["train.dropout", "1.5"]),
        ("caption.background", [255, 255], ["caption.background"]),
        ("caption.openai.temperature", 3, ["caption.openai.temperature"]),
        ("runtime.device", "tpu", ["runtime.device", "'tpu'"]),
        ("generate.steps", "many", ["generate.steps", "'many'"]),
        ("caption.max_side", 128, ["caption", "max_side (128) is below min_side (256)"]),
    ],
)
def test_bad_value_names_its_key(
    tmp_path: Path, raw: dict[str, Any], dotted: str, value: Any, expected: list[str]
) -> None:
    message = _error(tmp_path, _set(raw, dotted, value))
    for text in expected:
        assert text in message, f"{text!r} missing from:\n{message}"
    assert "unknown key" not in message


def test_a_value_no_member_of_a_union_takes_is_one_line_under_its_own_key(tmp_path: Path, raw: dict[str, Any]) -> None:
    """frames_per_batch is `auto` or a positive integer: pydantic reports each member apart, under its own tag."""
    message = _error(tmp_path, _set(raw, "generate.frames_per_batch", 0))
    assert "1 bad value(s)" in message
    line = next(x for x in message.splitlines() if "frames_per_batch" in x)
    assert line.strip().startswith("generate.frames_per_batch: ") and "'auto'" in line and "greater than 0" in line
    assert "constrained-int" not in message and "literal[" not in message


def test_resolution_multiple_of_8_accepted(tmp_path: Path, raw: dict[str, Any]) -> None:
    settings = load_settings(_write(tmp_path, _set(_set(raw, "generate.resolution", 768), "train.resolution", 512)))
    assert settings.generate.resolution == 768 and settings.train.resolution == 512


def test_min_frames_above_max_frames(tmp_path: Path, raw: dict[str, Any]) -> None:
    data = _set(_set(raw, "plan.min_frames", 9), "plan.max_frames", 7)
    message = _error(tmp_path, data)
    assert "plan" in message
    assert "min_frames (9) is above max_frames (7)" in message


def test_equal_min_and_max_frames_accepted(tmp_path: Path, raw: dict[str, Any]) -> None:
    data = _set(_set(raw, "plan.min_frames", 8), "plan.max_frames", 8)
    settings = load_settings(_write(tmp_path, data))
    assert settings.plan.min_frames == settings.plan.max_frames == 8


def test_duplicate_story_ids(tmp_path: Path, raw: dict[str, Any]) -> None:
    data = copy.deepcopy(raw)
    data["stories"].append({"id": data["stories"][0]["id"], "text": "Again."})
    message = _error(tmp_path, data)
    assert "stories" in message
    assert f"repeated: {data['stories'][0]['id']}" in message


def test_no_stories(tmp_path: Path, raw: dict[str, Any]) -> None:
    assert "stories" in _error(tmp_path, _set(raw, "stories", []))


def test_missing_required_section(tmp_path: Path, raw: dict[str, Any]) -> None:
    data = copy.deepcopy(raw)
    del data["character"]
    message = _error(tmp_path, data)
    assert "character: Field required" in message


def test_tiny_profile(tmp_path: Path, raw: dict[str, Any]) -> None:
    settings = load_settings(_write(tmp_path, _set(raw, "profile", "tiny")))
    assert settings.is_tiny


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent" / "params.yaml"
    with pytest.raises(SettingsError, match="not found") as exc:
        load_settings(path)
    assert str(path) in str(exc.value)


def test_invalid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  rank: [16\n  alpha: 16\n", encoding="utf-8")
    with pytest.raises(SettingsError, match="not valid YAML") as exc:
        load_settings(path)
    assert str(path) in str(exc.value)


@pytest.mark.parametrize("text", ["", "- a\n- b\n", "just a string\n"])
def test_not_a_mapping(tmp_path: Path, text: str) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(SettingsError, match="must be a mapping") as exc:
        load_settings(path)
    assert str(path) in str(exc.value)


def test_settings_are_frozen() -> None:
    settings = load_settings(REPO_PARAMS)
    with pytest.raises(Exception, match="frozen"):
        settings.train.rank = 4  # type: ignore[misc]


def test_generate_blocks_compile_refuses_cuda_graphs(tmp_path: Path, raw: dict[str, Any]) -> None:
    data = _set(_set(raw, "generate.compile", "blocks"), "generate.compile_mode", "reduce-overhead")
    message = _error(tmp_path, data)
    assert "generate" in message and "compile_mode default, or compile model" in message
    data = _set(_set(raw, "generate.compile", "model"), "generate.compile_mode", "reduce-overhead")
    assert load_settings(_write(tmp_path, data)).generate.compile_mode == "reduce-overhead"


def test_compile_scope_is_a_choice(tmp_path: Path, raw: dict[str, Any]) -> None:
    assert "train.compile" in _error(tmp_path, _set(raw, "train.compile", True))


def test_quantize_is_a_choice_and_off_by_default(tmp_path: Path, raw: dict[str, Any]) -> None:
    assert load_settings(REPO_PARAMS).generate.quantize == "none"
    assert "generate.quantize" in _error(tmp_path, _set(raw, "generate.quantize", "int4"))
    assert load_settings(_write(tmp_path, _set(raw, "generate.quantize", "fp8"))).generate.quantize == "fp8"


def test_reference_accepts_faceid_and_rejects_junk(tmp_path: Path, raw: dict[str, Any]) -> None:
    settings = load_settings(_write(tmp_path, _set(raw, "generate.reference", "faceid")))
    assert settings.generate.reference == "faceid"
    assert settings.models.sdxl.faceid_adapter and settings.models.sdxl.faceid_adapter_weight
    message = _error(tmp_path, _set(raw, "generate.reference", "face_id"))
    assert "generate.reference" in message and "'face_id'" in message
