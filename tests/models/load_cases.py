"""Run storyboard's model loaders on a list of cases in this process and print each case's ModelLoadError as JSON.

Run in a subprocess by tests/models/test_loading_errors.py, because huggingface_hub reads HF_ENDPOINT and
HF_HUB_OFFLINE once, at import: each environment (a local hub server, offline, an unreachable hub) needs a process
of its own. Input on stdin: {"models": <ModelSet fields>, "cases": [[name, kind, {field: value}], ...]}; the tiny
base model in "models" (a local folder) carries the adapters that the ip_adapter/faceid/controlnet kinds attach.
"""

from __future__ import annotations

import json
import sys

from storyboard.models.clip import ClipScorer
from storyboard.models.loading import Device, ModelLoadError, attach_ip_adapter, load_pipeline, with_controlnet
from storyboard.settings import ModelSet, Runtime


def main() -> None:
    request = json.load(sys.stdin)
    tiny = ModelSet(**request["models"])
    cpu = Device.from_runtime(Runtime(device="cpu"))
    pipe = None
    results = {}
    for name, kind, overrides in request["cases"]:
        models = tiny.model_copy(update=overrides)
        try:
            if kind in ("base", "vae"):
                load_pipeline(models, cpu)
            elif kind == "clip":
                ClipScorer(models.clip, cpu)
            elif kind == "train":
                from storyboard.train.lora import SdxlParts

                SdxlParts(models, cpu.device, cpu.dtype)
            else:
                pipe = pipe or load_pipeline(tiny, cpu)
                if kind == "controlnet":
                    with_controlnet(pipe, models, cpu)
                else:
                    attach_ip_adapter(pipe, models, 0.5, faceid=kind == "faceid")
            results[name] = {"error": None, "message": ""}
        except ModelLoadError as e:
            results[name] = {"error": type(e).__name__, "message": str(e)}
    print(json.dumps(results))


if __name__ == "__main__":
    main()
