"""Face pipeline: decode an upload, detect faces, check their quality, align them, embed them.

The usual entry point is :class:`FacePipeline`; the building blocks are usable on their own.
"""

from veilface.face.align import align_face
from veilface.face.detect import Detection, FaceDetector
from veilface.face.embed import Recognizer
from veilface.face.image import decode_image
from veilface.face.pipeline import Face, FacePipeline
from veilface.face.quality import assess

__all__ = [
    "Detection",
    "Face",
    "FaceDetector",
    "FacePipeline",
    "Recognizer",
    "align_face",
    "assess",
    "decode_image",
]
