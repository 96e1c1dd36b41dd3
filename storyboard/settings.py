"""Typed settings: params.yaml read once, validated, and handed to the stages.

Every knob of the pipeline is a field here with its bounds; unknown keys and bad values are rejected with a
message that names the key, so a typo in `dvc exp run -S ...` fails at once instead of being ignored.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from storyboard.errors import StoryboardError

PARAMS_FILE = Path("params.yaml")


class SettingsError(StoryboardError):
    """params.yaml is missing, unreadable or holds a bad value; the message names file and key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


PositiveInt = Annotated[int, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
# torch.compile of the denoisers. none; blocks: only the repeated transformer blocks (diffusers' regional
# compilation: compiles in under a minute, and again cheaply for each new shape); model: the whole network.
CompileScope = Literal["none", "blocks", "model"]
# torch.compile's modes; reduce-overhead adds CUDA graphs, which remove the per-kernel launch cost.
CompileMode = Literal["default", "reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune"]
# Weight and activation quantization of the denoisers' Linear layers (torchao), for speed: int8 runs on any
# device, fp8 needs a GPU of compute capability 8.9 or newer (H100, L4, RTX 40xx). Both change the frames a
# little; none keeps the model's own precision.
Quantize = Literal["none", "int8", "fp8"]
# The attention kernel tried first (storyboard/models/kernels.py); auto: torch's own order.
Attention = Literal["auto", "cudnn", "flash", "efficient"]
# The four ways generate renders a story; each is its own DVC stage (generate@<mode>), and evaluate compares them.
# multiref: no LoRA, a multi-reference image model (FLUX.2 klein) fed reference images of the character.
Mode = Literal["baseline", "lora", "ref_guided", "multiref"]
MODES: tuple[Mode, ...] = ("baseline", "lora", "ref_guided", "multiref")


class Character(_Section):
    name: str = Field(min_length=1)
    trigger: str = Field(min_length=1, pattern=r"^[a-z0-9_]+$")
    description: str = Field(min_length=1)


class Story(_Section):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    text: str = Field(min_length=1)


class ModelSet(_Section):
    """Where each model comes from: hub ids for `sdxl`, local folders written by the tiny builder for `tiny`."""

    base: str
    vae: str | None = None
    ip_adapter: str
    ip_adapter_subfolder: str = ""
    ip_adapter_weight: str
    ip_adapter_image_encoder: str = Field(
        "image_encoder", description="image encoder folder, relative to the IP-Adapter subfolder"
    )
    faceid_adapter: str | None = Field(None, description="IP-Adapter FaceID (generate.reference: faceid)")
    faceid_adapter_subfolder: str = ""
    faceid_adapter_weight: str | None = None
    controlnet: str
    lightning_lora: str = Field(
        "ByteDance/SDXL-Lightning", description="generate.sampler lightning: the 4-step distillation LoRA's repo"
    )
    lightning_lora_weight: str = "sdxl_lightning_4step_lora.safetensors"
    hyper_sd_lora: str = Field(
        "ByteDance/Hyper-SD", description="generate.sampler hyper-sd: the 8-step CFG distillation LoRA's repo"
    )
    hyper_sd_lora_weight: str = "Hyper-SDXL-8steps-CFG-lora.safetensors"
    multiref: str = Field(
        "black-forest-labs/FLUX.2-klein-4B",
        description="generate@multiref: a FLUX.2 klein pipeline (Flux2KleinPipeline) that takes reference images",
    )
    clip: str = Field(description="CLIP: generate's text check; evaluate's text and character (CIDS) scores")
    likeness: str = Field(
        "facebook/dinov2-base", description="DINOv2: generate's likeness check only (never an evaluate score)"
    )
    detector: str = Field(
        "IDEA-Research/grounding-dino-tiny", description="Grounding DINO: evaluate locates the character with it"
    )
    face_backend: Literal["insightface", "dlib"]
    face_model: str = Field("buffalo_l", description="InsightFace model pack name (insightface backend)")
    face_model_root: str | None = Field(None, description="InsightFace model root; None: ~/.insightface")


class TinyModels(_Section):
    root: Path
    seed: int = 0
    face_backend: Literal["insightface", "dlib"] = "dlib"


class Models(_Section):
    sdxl: ModelSet
    tiny: TinyModels


class Runtime(_Section):
    device: Literal["auto", "cuda", "cpu"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"


class Sample(_Section):
    count: Annotated[int, Field(ge=1, le=64)] = 12
    size: Annotated[int, Field(ge=64, le=2048)] = 256
    seed: int = 0


class OpenAIClient(_Section):
    model: str
    base_url: str | None = Field(None, description="None: OPENAI_BASE_URL or the OpenAI API")
    api_key_env: str = "OPENAI_API_KEY"
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 0.2
    max_tokens: PositiveInt = 300
    timeout_s: Annotated[float, Field(gt=0)] = 60.0
    max_retries: Annotated[int, Field(ge=0, le=10)] = 4


class Caption(_Section):
    input_dir: Path = Path("data/raw")
    backend: Literal["openai", "sidecar", "template"] = "openai"
    template: str = Field("{trigger}, {name}, a character illustration")
    prompt: str
    refusal_prompt: str
    openai: OpenAIClient
    concurrency: Annotated[int, Field(ge=1, le=64)] = 4
    cache_dir: Path = Field(Path(".cache/captions"), description="paid captions kept across runs, per image")
    retry_refused: bool = Field(False, description="ask again for images refused in an earlier run (costs money)")
    cost_per_1k_tokens_in: Annotated[float, Field(ge=0)] = 0.0025
    cost_per_1k_tokens_out: Annotated[float, Field(ge=0)] = 0.01
    min_side: Annotated[int, Field(ge=16)] = 256
    max_side: Annotated[int, Field(ge=64)] = 1024
    background: tuple[int, int, int] = Field((255, 255, 255), description="RGB behind transparent pixels")

    @field_validator("template")
    @classmethod
    def _template_names_trigger(cls, value: str) -> str:
        if "{trigger}" not in value:
            raise ValueError("must contain {trigger} so every caption carries the LoRA trigger token")
        return value

    @model_validator(mode="after")
    def _side_bounds(self) -> Caption:
        if self.max_side < self.min_side:
            raise ValueError(f"max_side ({self.max_side}) is below min_side ({self.min_side})")
        return self


class Validation(_Section):
    every: Annotated[int, Field(ge=0)] = Field(100, description="steps between sample images; 0: never")
    prompts: list[str] = Field(default_factory=list)
    steps: PositiveInt = 20
    seed: int = 0


class Train(_Section):
    rank: PositiveInt = 16
    alpha: PositiveInt = 16
    dropout: Fraction = 0.0
    target_modules: list[str] = Field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    text_encoder_lora: bool = False
    text_encoder_learning_rate: Annotated[float, Field(gt=0)] = 5e-5
    text_encoder_target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "out_proj"])
    learning_rate: Annotated[float, Field(gt=0)] = 1e-4
    lr_scheduler: Literal[
        "constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial"
    ] = "constant_with_warmup"
    lr_warmup_steps: Annotated[int, Field(ge=0)] = 0
    max_steps: PositiveInt = 500
    epochs: PositiveInt | None = Field(None, description="if set, steps = epochs x images / (batch x accumulation)")
    batch_size: PositiveInt = 1
    gradient_accumulation_steps: PositiveInt = 1
    optimizer: Literal["adamw", "adamw8bit"] = "adamw"
    adam_weight_decay: Annotated[float, Field(ge=0)] = 1e-2
    max_grad_norm: Annotated[float, Field(ge=0)] = 1.0
    snr_gamma: Annotated[float, Field(gt=0)] | None = Field(None, description="min-SNR loss weighting; 5 is usual")
    noise_offset: Annotated[float, Field(ge=0)] = 0.0
    caption_dropout: Fraction = 0.0
    checkpoint_every: PositiveInt = 100
    checkpoints_keep: PositiveInt = 2
    resolution: Annotated[int, Field(ge=32)] | None = Field(
        None, description="None: the base model's native size (unet sample_size x VAE scale)"
    )
    bucketing: bool = True
    center_crop: bool = True
    random_flip: bool = False
    seed: int = 0
    mixed_precision: Literal["no", "bf16", "fp16"] = "bf16"
    gradient_checkpointing: bool = False
    # Measured on an H100 (BENCHMARKS.md): blocks + CUDA graphs train 3-5x faster than eager after ~1 min compiling.
    compile: CompileScope = "blocks"
    compile_mode: CompileMode = "reduce-overhead"
    log_every: PositiveInt = Field(10, description="steps between loss read-backs (each one waits for the GPU)")
    validation: Validation = Validation()

    @field_validator("resolution")
    @classmethod
    def _multiple_of_8(cls, value: int | None) -> int | None:
        if value is not None and value % 8:
            raise ValueError(f"must be a multiple of 8 (the VAE downsamples by 8), got {value}")
        return value


class Select(_Section):
    """Which of the train stage's saved steps becomes models/lora (the select stage)."""

    # best: the step of highest identity whose text alignment is within `tolerance` of the best step's (scored on
    # the validation samples); last: the final step; a number: that saved step.
    step: Literal["best", "last"] | PositiveInt = "best"
    tolerance: Annotated[float, Field(ge=0, le=2)] = Field(
        0.02, description="CLIP text-alignment drop from the best step beyond which a step counts as over-fit"
    )


class Plan(_Section):
    backend: Literal["openai", "offline"] = "openai"
    structured_output: bool = Field(
        True,
        description="ask the endpoint to enforce the plan's JSON schema (then JSON mode, then nothing, as far as it "
        "takes them); false: no response_format at all, for local servers whose schema or JSON mode misbehaves",
    )
    min_frames: Annotated[int, Field(ge=2, le=16)] = 6
    max_frames: Annotated[int, Field(ge=2, le=16)] = 10
    scene_tokens: Annotated[int, Field(ge=8, le=75)] = Field(
        50, description="most CLIP tokens of a frame's scene (CLIP's text scores read 75)"
    )
    openai: OpenAIClient

    @model_validator(mode="after")
    def _frame_bounds(self) -> Plan:
        if self.min_frames > self.max_frames:
            raise ValueError(f"min_frames ({self.min_frames}) is above max_frames ({self.max_frames})")
        return self


# A frame check's threshold: a cosine, or auto (calibrated on the training set, see Calibration).
Threshold = Literal["auto"] | Annotated[float, Field(ge=-1, le=1)]
Percentile = Annotated[float, Field(ge=0, le=100)]


class Calibration(_Section):
    """How the `auto` thresholds are computed, once per run, from the training pictures (docs/frame-checks.md)."""

    clip_percentile: Percentile = Field(
        5, description="percentile of the training pictures' CLIP scores against their own captions"
    )
    likeness_percentile: Percentile = Field(
        5, description="percentile of the training pictures' likeness to each other (the check's own formula)"
    )
    min_images: Annotated[int, Field(ge=2)] = Field(
        5, description="fewer usable training pictures than this: the fallback, with a warning"
    )
    clip_fallback: Annotated[float, Field(ge=-1, le=1)] = Field(
        0.25, description="the text threshold when it can't be calibrated (no dataset, too few or template captions)"
    )
    likeness_fallback: Annotated[float, Field(ge=-1, le=1)] = Field(
        0.70, description="the likeness threshold when it can't be calibrated (no dataset, too few pictures)"
    )


class Multiref(_Section):
    """generate@multiref's own knobs. Defaults from the FLUX.2 klein 4B model card: 4 steps (step-distilled), no
    classifier-free guidance (the distilled model ignores guidance_scale)."""

    steps: PositiveInt = 4
    guidance_scale: Annotated[float, Field(ge=0)] = Field(
        1.0, description="classifier-free guidance; only a non-distilled klein (klein base) uses it"
    )
    references: Annotated[int, Field(ge=1, le=8)] = Field(
        2,
        description="training images chosen as references when data/references holds none: the clearest face, "
        "then the fullest figures",
    )
    reference_size: Annotated[int, Field(ge=64, le=2048)] | None = Field(
        None, description="longest side of each reference image fed to the model; None: the frame's resolution"
    )
    first_frame: bool = Field(False, description="frame 1 of the story is a further reference for the later frames")
    max_sequence_length: Annotated[int, Field(ge=16, le=512)] = Field(
        512, description="text tokens of each prompt (the pipeline's default, the model's training length)"
    )


class Generate(_Section):
    steps: PositiveInt = 30
    guidance_scale: Annotated[float, Field(ge=0)] = 6.0
    resolution: Annotated[int, Field(ge=32)] | None = None
    seed: int = 1234
    style: str = ""
    negative_prompt: str = ""
    lora_scale: Annotated[float, Field(ge=0, le=2)] = 1.0
    ip_adapter_scale: Annotated[float, Field(ge=0, le=2)] = 0.6
    controlnet_scale: Annotated[float, Field(ge=0, le=2)] = 0.8
    clip_threshold: Threshold = Field(
        "auto",
        description="CLIP cosine similarity of frame and scene text below which a frame is redone; auto: "
        "calibrated on the training pictures against their captions (generate.calibration)",
    )
    likeness_threshold: Threshold = Field(
        "auto",
        description="DINOv2 image cosine (frame vs frame 1 and the training images) below which it is redone; "
        "auto: calibrated on the training pictures' likeness to each other (generate.calibration)",
    )
    calibration: Calibration = Calibration()
    max_retries: Annotated[int, Field(ge=0, le=10)] = 2
    sampler: Literal["standard", "lightning", "hyper-sd"] = Field(
        "standard",
        description="standard: steps and guidance_scale as given; lightning | hyper-sd: a few-step distillation "
        "LoRA fused in, with its own scheduler, steps and guidance (storyboard/generate/samplers.py)",
    )
    frames_per_batch: PositiveInt | Literal["auto"] = Field(
        "auto",
        description="frames per pipeline call; auto: a story in one call (up to 8 frames), split evenly over the "
        "GPUs of `accelerate launch`; a number: the same batches, so the same pixels, on any number of GPUs",
    )
    reference: Literal["face", "frame", "faceid"] = Field(
        "face",
        description="ref_guided: the IP-Adapter gets frame 1's face crop, or the whole frame; faceid: the IP-Adapter "
        "FaceID gets the face-recognition embedding of frame 1's face",
    )
    face_min_score: Fraction = Field(
        0.5, description="ref_guided: face detector confidence below which frame 1's face is not the reference"
    )
    contact_sheet_columns: PositiveInt = 4
    gif_frame_ms: PositiveInt = 900
    vae_tiling: bool = False
    vae_slicing: bool = False
    cpu_offload: bool = Field(False, description="model CPU offload for small GPUs (slower)")
    compile: CompileScope = Field("none", description="torch.compile the UNet (and ControlNet)")
    compile_mode: CompileMode = "default"
    quantize: Quantize = Field("none", description="int8 | fp8 Linear layers of the UNet/ControlNet (torchao)")
    attention: Attention = Field("auto", description="the attention kernel tried first: cudnn | flash | efficient")
    channels_last: bool = Field(False, description="UNet, ControlNet and VAE convolutions in NHWC")
    fuse_qkv: bool = Field(False, description="one matmul for each attention's q, k, v (not with an IP-Adapter)")
    multiref: Multiref = Multiref()

    @field_validator("resolution")
    @classmethod
    def _multiple_of_8(cls, value: int | None) -> int | None:
        return Train._multiple_of_8(value)

    @model_validator(mode="after")
    def _graphs_need_the_whole_model(self) -> Generate:
        # Seen on an H100: compiled blocks under CUDA graphs overwrite each other's outputs at inference time.
        if self.compile == "blocks" and self.compile_mode in ("reduce-overhead", "max-autotune"):
            raise ValueError(
                f"compile blocks can't use compile_mode {self.compile_mode} (CUDA graphs) when generating: "
                "use compile_mode default, or compile model"
            )
        return self


class Evaluate(_Section):
    face_min_score: Fraction = Field(0.5, description="face detector confidence below which a face is ignored")
    face_backend: Literal["auto", "insightface", "dlib"] = Field(
        "auto",
        description="face model of the face figures; auto: the profile's face_backend, or the other one when "
        "generate.reference is faceid (a figure must not come from the embedding generate conditioned on)",
    )
    detector_prompt: str = Field(
        "character",
        min_length=1,
        description="Grounding DINO's text query for the character; {name} and {description} are filled in "
        "from `character` (ViStoryBench prompts 'character')",
    )


class Settings(_Section):
    profile: Literal["sdxl", "tiny"] = "sdxl"
    runtime: Runtime = Runtime()
    character: Character
    stories: list[Story] = Field(min_length=1)
    models: Models
    sample: Sample = Sample()
    caption: Caption
    train: Train = Field(default_factory=Train)
    select: Select = Select()
    plan: Plan
    generate: Generate = Generate()
    evaluate: Evaluate = Evaluate()

    @field_validator("stories")
    @classmethod
    def _unique_ids(cls, stories: list[Story]) -> list[Story]:
        ids = [s.id for s in stories]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"story ids must be unique; repeated: {', '.join(dupes)}")
        return stories

    @model_validator(mode="after")
    def _best_needs_prompts(self) -> Settings:
        if self.select.step == "best" and not self.train.validation.prompts:
            raise ValueError(
                "select.step best scores samples of train.validation.prompts: give some, or set select.step: last"
            )
        return self

    @model_validator(mode="after")
    def _evaluate_face_model_is_independent(self) -> Settings:
        conditioning = self.models.tiny.face_backend if self.profile == "tiny" else self.models.sdxl.face_backend
        if self.generate.reference == "faceid" and self.evaluate.face_backend == conditioning:
            raise ValueError(
                f"evaluate.face_backend {conditioning} is the face model generate.reference: faceid conditions on, "
                "so its face scores would measure the conditioning: set evaluate.face_backend: auto (the other one)"
            )
        return self

    @property
    def is_tiny(self) -> bool:
        return self.profile == "tiny"

    def story_ids(self) -> str:
        return ", ".join(s.id for s in self.stories)


def _section_model(annotation: object) -> type[BaseModel] | None:
    """The settings model a field holds (directly, in a list or optional), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next((m for arg in get_args(annotation) if (m := _section_model(arg))), None)


def _key(loc: tuple) -> str:
    """The params key of an error's location, without pydantic's tag for the member of a union that failed
    (`generate.frames_per_batch.constrained-int` is `generate.frames_per_batch`)."""
    model: type[BaseModel] | None = Settings
    parts: list[str] = []
    for part in loc:
        if isinstance(part, int):  # a list index (stories.0.id)
            parts.append(str(part))
            continue
        if model is None or part not in model.model_fields:
            break
        parts.append(part)
        model = _section_model(model.model_fields[part].annotation)
    return ".".join(parts) or "(top level)"


def _format_error(path: Path, err: ValidationError) -> str:
    problems: dict[str, list[str]] = {}  # a value no member of a union takes: one line, each member's reason
    got: dict[str, str] = {}
    for e in err.errors():
        key, msg = _key(e["loc"]), e["msg"]
        if e["type"] == "extra_forbidden":
            key, msg = (
                ".".join(str(p) for p in e["loc"]),
                "unknown key (typo? see params.yaml comments for the known keys)",
            )
        elif "input" in e and not isinstance(e["input"], dict | list):
            got[key] = f" (got {e['input']!r})"
        problems.setdefault(key, []).append(msg)
    lines = [f"{path}: {len(problems)} bad value(s):"]
    lines += [f"  {key}: {'; or '.join(msgs)}{got.get(key, '')}" for key, msgs in problems.items()]
    return "\n".join(lines)


def load_settings(path: Path | str = PARAMS_FILE) -> Settings:
    """Read and validate params.yaml; raise SettingsError naming the file and every bad key."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SettingsError(f"{path} not found: run from the repository root, or pass --params") from None
    except yaml.YAMLError as e:
        raise SettingsError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise SettingsError(f"{path} must be a mapping of sections, got {type(raw).__name__}")
    try:
        return Settings.model_validate(raw)
    except ValidationError as e:
        raise SettingsError(_format_error(path, e)) from None


def slug(text: str) -> str:
    """A file-system-safe lowercase name for free text."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "item"
