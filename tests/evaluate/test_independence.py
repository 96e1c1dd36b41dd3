"""No evaluate identity figure comes from a model generate selected frames with or conditioned on."""

from __future__ import annotations

import json

import pytest

from storyboard.evaluate.independence import conditioning_face_backend, evaluate_face_backend, figure_provenance
from storyboard.models.loading import model_set
from storyboard.settings import SettingsError, load_settings

REFERENCES = ("face", "frame", "faceid")


def _settings(params, profile: str, reference: str, **evaluate):
    generate = params.generate.model_copy(update={"reference": reference})
    return params.model_copy(
        update={"profile": profile, "generate": generate, "evaluate": params.evaluate.model_copy(update=evaluate)}
    )


@pytest.mark.parametrize("reference", REFERENCES)
@pytest.mark.parametrize("profile", ["sdxl", "tiny"])
def test_evaluate_models_are_not_generates(params, tiny_settings, profile, reference):
    settings = _settings(tiny_settings if profile == "tiny" else params, profile, reference)
    models = model_set(settings)
    # the character figures' model (CLIP, ViStoryBench's branch) is not the one the retry loop selects with
    assert models.clip != models.likeness
    # generate@multiref's image model is none of evaluate's
    assert models.multiref not in (models.clip, models.detector, models.likeness)
    face = evaluate_face_backend(settings)
    if reference == "faceid":  # generate conditions on this backend's embedding: evaluate must use the other
        assert face != conditioning_face_backend(settings)
    provenance = figure_provenance(settings, models, face)
    identity = [v for k, v in provenance.items() if k.startswith(("character", "face"))]
    assert len(identity) == 2 and not any(v["optimised_by_generate"] for v in identity)
    assert provenance["clip_text_score"]["optimised_by_generate"]  # said plainly: generate selects on it


def test_faceid_with_the_conditioning_face_model_is_refused(tmp_path):
    raw = json.loads(load_settings().model_dump_json())  # the repository's params; JSON is valid YAML
    raw["generate"]["reference"] = "faceid"
    raw["evaluate"]["face_backend"] = raw["models"]["sdxl"]["face_backend"]
    path = tmp_path / "params.yaml"
    path.write_text(json.dumps(raw))
    with pytest.raises(SettingsError, match=r"evaluate\.face_backend.*auto"):
        load_settings(path)
    raw["evaluate"]["face_backend"] = "auto"
    path.write_text(json.dumps(raw))
    assert evaluate_face_backend(load_settings(path)) != raw["models"]["sdxl"]["face_backend"]
