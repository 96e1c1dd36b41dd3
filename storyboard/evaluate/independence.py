"""Which model makes each evaluate figure, and whether generate optimised for it.

generate picks each frame's kept attempt by its CLIP text score and its DINOv2 likeness to frame 1 and the
training images (models.<profile>.likeness), and with generate.reference: faceid it conditions on the profile's
face backend's embedding; generate@multiref picks its clearest-face reference training image by that backend's
detections (never its embedding), and conditions FLUX.2 klein on the pixels of its references. evaluate scores
characters with CLIP ViT-L/14 image features of the Grounding DINO box (ViStoryBench's CIDS branch), and faces
with `evaluate_face_backend`, which is never the conditioning one.
"""

from __future__ import annotations

from storyboard.settings import ModelSet, Settings

OTHER_FACE_BACKEND = {"insightface": "dlib", "dlib": "insightface"}


def conditioning_face_backend(settings: Settings) -> str:
    """The face backend generate uses (face crops for the IP-Adapter; the FaceID embedding when faceid)."""
    return settings.models.tiny.face_backend if settings.is_tiny else settings.models.sdxl.face_backend


def evaluate_face_backend(settings: Settings) -> str:
    """evaluate.face_backend resolved: auto is the conditioning backend, or the other one when generate conditions
    on its embedding (reference: faceid). Settings refuse an explicit choice of the conditioning one then."""
    choice = settings.evaluate.face_backend
    if choice != "auto":
        return choice
    conditioning = conditioning_face_backend(settings)
    return OTHER_FACE_BACKEND[conditioning] if settings.generate.reference == "faceid" else conditioning


def figure_provenance(settings: Settings, models: ModelSet, face_backend: str) -> dict[str, dict]:
    """For eval.json: each headline figure's model and whether a stage selected or conditioned with it."""
    faceid = settings.generate.reference == "faceid"
    conditioning = conditioning_face_backend(settings)
    character = {"model": models.clip, "optimised_by_generate": models.clip == models.likeness}
    face = {"model": face_backend, "optimised_by_generate": faceid and face_backend == conditioning}
    return {
        "clip_text_score": {
            "model": models.clip,
            "optimised_by_generate": True,
            "note": "generate keeps the attempt that best passes generate.clip_threshold on this very score",
        },
        "character (clip_image_to_first, character_*, vistorybench_*_cids)": character,
        "face (face_*, vistorybench_*_cids_face)": face,
        "generate selection": {
            "likeness_model": models.likeness,
            "text_model": models.clip,
            "conditioning_face_backend": conditioning if faceid else None,
            # multiref: which training image is a reference (detections only: the face figures compare
            # embeddings, which no mode but faceid conditions on)
            "multiref_reference_face_backend": conditioning,
        },
        "detector": {"model": models.detector, "optimised_by_generate": False},
    }
