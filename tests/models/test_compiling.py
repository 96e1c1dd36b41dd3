"""torch.compile of the denoisers: in place, so names and weights stay; compiled output equals eager output."""

from __future__ import annotations

import os

import torch
from torch._dynamo.utils import counters

from storyboard.models.compiling import (
    COMPILE_CACHE_DIR,
    RECOMPILE_LIMIT,
    compile_in_place,
    persist_compile_cache,
    warn_if_cudagraphs_skipped,
)
from storyboard.models.loading import load_pipeline


def test_blocks_compile_in_place_and_match_eager(tiny_models, cpu, unet_inputs):
    unet = load_pipeline(tiny_models, cpu).unet
    keys = list(unet.state_dict())
    with torch.no_grad():
        eager = unet(**unet_inputs(unet)).sample
    compiled = compile_in_place(unet, "blocks", "default")
    blocks = [m for m in unet.modules() if type(m).__name__ == "BasicTransformerBlock"]
    assert compiled == len(blocks) > 0
    assert all(b._compiled_call_impl is not None for b in blocks)
    assert unet._compiled_call_impl is None  # only the blocks
    assert list(unet.state_dict()) == keys  # LoRA loading and checkpoints see the plain names
    with torch.no_grad():
        assert torch.allclose(unet(**unet_inputs(unet)).sample, eager, atol=1e-4)


def test_none_and_model_scopes(tiny_models, cpu):
    pipe = load_pipeline(tiny_models, cpu)
    assert compile_in_place(pipe.unet, "none", "default") == 0
    assert pipe.unet._compiled_call_impl is None
    assert compile_in_place(pipe.vae, "model", "default") == 1
    assert pipe.vae._compiled_call_impl is not None


def test_compile_caches_persist_in_the_repo_unless_the_user_chose(tmp_path, monkeypatch):
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    monkeypatch.chdir(tmp_path)
    # Inductor writes its default into the variable on first use: that is not a user's choice.
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())
    assert persist_compile_cache() == tmp_path / COMPILE_CACHE_DIR
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / COMPILE_CACHE_DIR)
    assert (tmp_path / COMPILE_CACHE_DIR).is_dir()
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert persist_compile_cache() == tmp_path / "mine"
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "mine")


def test_skipped_cuda_graphs_are_reported_when_asked_for(caplog):
    before = counters["inductor"]["cudagraph_skips"]
    counters["inductor"]["cudagraph_skips"] = 3
    try:
        with caplog.at_level("WARNING", logger="storyboard"):
            assert warn_if_cudagraphs_skipped("blocks", "reduce-overhead", "train") == 3
            assert warn_if_cudagraphs_skipped("blocks", "default", "train") == 0  # no CUDA graphs asked for
            assert warn_if_cudagraphs_skipped("none", "reduce-overhead", "train") == 0
    finally:
        counters["inductor"]["cudagraph_skips"] = before
    (record,) = caplog.records
    assert "train: 3 compiled graph(s) run without CUDA graphs" in record.getMessage()
    assert "TORCH_LOGS=perf_hints" in record.getMessage()


def test_compiling_leaves_room_for_every_shape_of_a_story(tiny_models, cpu):
    """ref_guided calls the blocks' one compiled function with more shapes than torch's default limit of 8 graphs
    (past it the rest ran eagerly): compiling raises the limit."""
    unet = load_pipeline(tiny_models, cpu).unet
    # dynamo's own patch, which puts the process's value back (monkeypatch would delete it, hiding the setting)
    with torch._dynamo.config.patch(recompile_limit=8):
        compile_in_place(unet, "blocks", "default")
        assert torch._dynamo.config.recompile_limit == RECOMPILE_LIMIT
