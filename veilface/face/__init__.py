"""Face pipeline: decode an upload, detect faces, check their quality, align them, embed them.

The usual entry point is :class:`FacePipeline`; the building blocks are usable on their own.
"""

from veilface.face.align import align_face
from veilface.face.detect import Detection, FaceDetector
from veilface.face.embed import Recognizer
from veilface.face.image import decode_image
from veilface.face.pipeline import Face, FacePipeline
from veilface.face.quality import assess
from veilface.models.builtins import RecognizerSpec, get_spec, list_specs

__all__ = [
    "Detection",
    "Face",
    "FaceDetector",
    "FacePipeline",
    "Recognizer",
    "RecognizerSpec",
    "align_face",
    "assess",
    "decode_image",
    "get_spec",
    "list_specs",
]
