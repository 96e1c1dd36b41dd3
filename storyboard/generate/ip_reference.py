"""What the IP-Adapter of ref_guided's later frames sees, as generate.reference says: frame 1 (`frame`), its face
crop (`face`), or for the IP-Adapter FaceID the face-recognition embedding of frame 1's face (`faceid`), the
training images' mean face when frame 1 has none."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import cached_property
from typing import Literal

import numpy as np
import torch
from PIL import Image

from storyboard.errors import StoryboardError
from storyboard.models.faces import FaceBackend, largest_face, mean_embedding

logger = logging.getLogger(__name__)

FACE_MARGIN = 0.4  # the face crop: the face box grown by this share on each side
# An image (frame 1, or its face crop), or for FaceID an identity embedding (1-d, the face backend's size).
IpReference = Image.Image | torch.Tensor
IdentitySource = Literal["frame_1", "training_images"]


class NoFaceIdentity(StoryboardError):
    """generate.reference: faceid found no face to take the identity from; the message says what to set instead."""


def face_crop(image: Image.Image, faces: FaceBackend | None) -> Image.Image:
    """A square crop around the largest face with a margin, or the whole frame when no face is found."""
    face = largest_face(faces.detect(image)) if faces is not None else None
    if face is None:
        return image
    x0, y0, x1, y1 = face.bbox
    side = max(x1 - x0, y1 - y0) * (1 + 2 * FACE_MARGIN)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    box = (
        max(0, cx - side / 2),
        max(0, cy - side / 2),
        min(image.width, cx + side / 2),
        min(image.height, cy + side / 2),
    )
    return image.crop(tuple(round(v) for v in box))


class IpReferences:
    """Takes each story's IP-Adapter reference from its frame 1."""

    def __init__(
        self, kind: str, faces: FaceBackend | None = None, training_images: Sequence[Image.Image] = ()
    ) -> None:
        """`kind`: generate.reference; `training_images`: the fallback identity of `faceid`."""
        self.kind, self.faces, self.training_images = kind, faces, training_images
        self.identity_from: IdentitySource | None = None  # where the last FaceID identity came from

    def of(self, first: Image.Image, story_id: str) -> IpReference:
        if self.kind == "frame":
            return first
        if self.kind == "face":
            return face_crop(first, self.faces)
        face = largest_face(self.faces.detect(first))
        if face is not None:
            self.identity_from, identity = "frame_1", face.embedding
        elif self._training_identity is not None:
            logger.warning(
                "%s: no face found in frame 1; the IP-Adapter FaceID gets the mean face of the training images",
                story_id,
            )
            self.identity_from, identity = "training_images", self._training_identity
        else:
            raise NoFaceIdentity(
                f"{story_id}: generate.reference: faceid needs a face, and the {self.faces.name} face backend found "
                f"none in frame 1 nor in the {len(self.training_images)} training images: set generate.reference: "
                "face (the IP-Adapter then gets the whole frame 1)"
            )
        return torch.from_numpy(np.array(identity))

    @cached_property
    def _training_identity(self) -> np.ndarray | None:
        """The training images' mean face embedding, found once, on first need."""
        return mean_embedding(self.faces, self.training_images) if self.training_images else None
