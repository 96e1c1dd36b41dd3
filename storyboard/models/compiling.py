"""torch.compile of the denoisers (UNet, ControlNet): one helper for the train and generate stages."""

from __future__ import annotations

import torch

from storyboard.log import logger
from storyboard.settings import CompileMode, CompileScope

# The blocks a UNet repeats (diffusers' `_repeated_blocks`); the ControlNet, which declares none, repeats the same.
DEFAULT_REPEATED_BLOCKS = ("BasicTransformerBlock",)
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


def compile_in_place(module: torch.nn.Module, scope: CompileScope, mode: CompileMode) -> int:
    """Compile `module` (or its repeated blocks) in place; returns how many modules were compiled.

    In place (`nn.Module.compile`), so state-dict keys, `unwrap_model` and LoRA loading see the plain module.
    "blocks" is diffusers' regional compilation: every transformer block shares one compiled graph, so it compiles
    in a fraction of the whole network's time and recompiles cheaply when a new bucket or batch shape comes.
    """
    if scope == "none":
        return 0
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
