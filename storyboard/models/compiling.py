"""torch.compile of the denoisers (UNet, ControlNet): one helper for the train and generate stages."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from storyboard.settings import CompileMode, CompileScope

logger = logging.getLogger(__name__)

# The blocks a UNet repeats (diffusers' `_repeated_blocks`); the ControlNet, which declares none, repeats the same.
DEFAULT_REPEATED_BLOCKS = ("BasicTransformerBlock",)
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")
# Inductor's caches (FX graphs, AOTAutograd graphs, Triton kernels, autotuning) under the repo, ignored by git.
# Every stage is its own process: without a cache that outlives it, each `dvc repro` compiles from scratch. By
# default inductor keeps them in /tmp/torchinductor_<user>, which a pod's restart wipes while the repo's volume
# stays; here they sit beside the code, per repo. TORCHINDUCTOR_CACHE_DIR set by the user wins.
COMPILE_CACHE_DIR = Path(".cache/torch-compile")
# Graphs dynamo keeps per compiled function before it runs the function eagerly. Every transformer block of the
# UNet and ControlNet shares one function, and ref_guided alone calls it with 2 token counts x 2 batches (frame 1,
# the later frames) x 2 models, plus a batch per retry: past torch's default of 8 the rest ran eagerly, with the
# guards still checked on every call, which made a compiled ref_guided story slower than an eager one.
RECOMPILE_LIMIT = 64


def persist_compile_cache(folder: Path = COMPILE_CACHE_DIR) -> Path:
    """Point inductor's caches at `folder` unless the user chose a place; returns where they are.

    The FX graph and AOTAutograd caches are on by default (torch 2.4+): a later process that compiles the same
    graphs loads their kernels from there instead of compiling them again.
    """
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    # Inductor writes its default into the variable on first use; only another value is the user's choice.
    if chosen and Path(chosen) != Path(default_cache_dir()).absolute():
        return Path(chosen)
    folder = folder.absolute()
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    logger.info("torch.compile caches in %s (kept across runs; TORCHINDUCTOR_CACHE_DIR moves them)", folder)
    return folder


def compile_in_place(module: torch.nn.Module, scope: CompileScope, mode: CompileMode) -> int:
    """Compile `module` (or its repeated blocks) in place; returns how many modules were compiled.

    In place (`nn.Module.compile`), so state-dict keys, `unwrap_model` and LoRA loading see the plain module.
    "blocks" is diffusers' regional compilation: every transformer block shares one compiled function, so it compiles
    in a fraction of the whole network's time and recompiles cheaply when a new bucket or batch shape comes.
    """
    if scope == "none":
        return 0
    persist_compile_cache()
    if torch._dynamo.config.recompile_limit < RECOMPILE_LIMIT:
        torch._dynamo.config.recompile_limit = RECOMPILE_LIMIT
    kwargs = {} if mode == "default" else {"mode": mode}
    if scope == "model":
        if module._compiled_call_impl is not None:
            return 0  # already compiled: modes that share a UNet compile it once
        module.compile(**kwargs)
        compiled = 1
    else:
        names = set(getattr(module, "_repeated_blocks", None) or DEFAULT_REPEATED_BLOCKS)
        blocks = [m for m in module.modules() if type(m).__name__ in names and m._compiled_call_impl is None]
        if not blocks:
            return 0
        for block in blocks:
            block.compile(**kwargs)
        compiled = len(blocks)
    logger.info("torch.compile (%s, mode %s): %s, %d module(s)", scope, mode, type(module).__name__, compiled)
    return compiled


def mark_step_begin(scope: CompileScope, mode: CompileMode) -> None:
    """Tell CUDA graph trees a new iteration starts (the last one's outputs may be overwritten)."""
    if scope != "none" and mode in CUDA_GRAPH_MODES:
        torch.compiler.cudagraph_mark_step_begin()


def warn_if_cudagraphs_skipped(scope: CompileScope, mode: CompileMode, what: str) -> int:
    """After the compiled code has run: warn when CUDA graphs were asked for but inductor ran some graphs without
    them (it falls back silently, e.g. on mutated inputs, which DDP can cause); returns how many were skipped."""
    if scope == "none" or mode not in CUDA_GRAPH_MODES:
        return 0
    from torch._dynamo.utils import counters

    skipped = int(counters["inductor"]["cudagraph_skips"])
    if skipped:
        logger.warning(
            "%s: %d compiled graph(s) run without CUDA graphs (compile_mode %s), so those steps are slower; "
            "TORCH_LOGS=perf_hints names the cause",
            what,
            skipped,
            mode,
        )
    return skipped
