"""The model libraries are quieted without importing one a stage never uses (evaluate loads no diffusers model)."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import sys
import transformers
from storyboard.log import quiet_model_libraries
quiet_model_libraries()
from transformers.utils import logging
assert "diffusers" not in sys.modules, "quieting imported diffusers"
assert logging.get_verbosity() == logging.ERROR and not logging.is_progress_bar_enabled()
import diffusers
quiet_model_libraries()
from diffusers.utils import logging as diffusers_logging
assert diffusers_logging.get_verbosity() == diffusers_logging.ERROR
assert not diffusers_logging.is_progress_bar_enabled()
"""


def test_quiet_model_libraries_quiets_only_what_is_imported():
    proc = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


HUB_WARNING = """
import logging
from storyboard.log import quiet_model_libraries, setup_logging
setup_logging()
import huggingface_hub
quiet_model_libraries()
logging.getLogger("huggingface_hub.utils._http").warning("Retrying in 1s [Retry 1/5].")
"""


def test_a_huggingface_hub_warning_is_printed_once():
    """huggingface_hub has a handler of its own and passed its records up to the stage's root handler too."""
    proc = subprocess.run([sys.executable, "-c", HUB_WARNING], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.count("Retrying in 1s") == 1, proc.stderr


TORCHAO_IMPORT = """
from storyboard.log import setup_logging
setup_logging()
import peft.tuners.lora  # imports torchao when installed, as train and generate do
import torchao
"""


def test_torchao_import_warnings_stay_out_of_a_stage_log():
    """Each stage process printed torchao's optional-kernel load failures and torch's enum deprecation: noise that
    reads like a broken install."""
    proc = subprocess.run([sys.executable, "-c", TORCHAO_IMPORT], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "WARNING torchao" not in proc.stderr and "_pytree" not in proc.stderr, proc.stderr[-2000:]
