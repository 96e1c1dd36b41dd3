"""Run storyboard's model loaders on a list of cases in this process and print each case's ModelLoadError as JSON.

Run in a subprocess by tests/models/test_loading_errors.py, because huggingface_hub reads HF_ENDPOINT and
HF_HUB_OFFLINE once, at import: each environment (a local hub server, offline, an unreachable hub) needs a process
of its own. Input on stdin: {"models": <ModelSet fields>, "cases": [[name, kind, {field: value}], ...]}; the tiny
base model in "models" (a local folder) carries the adapters that the ip_adapter/faceid/controlnet kinds attach.
Output: {case: {"error", "message", "seconds" (the case's own time; the model classes are imported before)}}.
"""

from __future__ import annotations

import json
import sys
import time

from storyboard.log import setup_logging
from storyboard.models.clip import ClipScorer
from storyboard.models.loading import Device, ModelLoadError, attach_ip_adapter, load_pipeline, with_controlnet
from storyboard.settings import ModelSet, Runtime


def main() -> None:
    setup_logging()  # as a stage does: its log lines, and huggingface_hub's, go to stderr
    _import_model_classes()
    request = json.load(sys.stdin)
    tiny = ModelSet(**request["models"])
    cpu = Device.from_runtime(Runtime(device="cpu"))
    pipe = None
    results = {}
    for name, kind, overrides in request["cases"]:
        models = tiny.model_copy(update=overrides)
        started = time.perf_counter()
        try:
            if kind in ("base", "vae"):
                load_pipeline(models, cpu)
            elif kind == "clip":
                ClipScorer(models.clip, cpu)
            elif kind == "train":
                from storyboard.train.lora import SdxlParts

                SdxlParts(models, cpu.device, cpu.dtype)
            elif kind == "detector":
                from storyboard.models.detector import CharacterDetector

                CharacterDetector(models.detector, cpu)
            else:
                pipe = pipe or load_pipeline(tiny, cpu)
                if kind == "controlnet":
                    with_controlnet(pipe, models, cpu)
                else:
                    attach_ip_adapter(pipe, models, 0.5, faceid=kind == "faceid")
            results[name] = {"error": None, "message": ""}
        except ModelLoadError as e:
            results[name] = {"error": type(e).__name__, "message": str(e)}
        results[name]["seconds"] = time.perf_counter() - started
    print(json.dumps(results))


def _import_model_classes() -> None:
    """Imported before any case is timed: a case's seconds are its loading's, not the libraries' import (which on a
    busy CPU takes longer than any hub's answer)."""
    import diffusers
    import transformers

    for name in ("AutoencoderKL", "UNet2DConditionModel", "StableDiffusionXLPipeline", "DDPMScheduler"):
        getattr(diffusers, name)
    for name in ("CLIPTextModel", "CLIPTextModelWithProjection", "CLIPTokenizer", "CLIPModel", "CLIPProcessor"):
        getattr(transformers, name)
    for name in ("GroundingDinoForObjectDetection", "GroundingDinoProcessor"):
        getattr(transformers, name)


if __name__ == "__main__":
    main()
