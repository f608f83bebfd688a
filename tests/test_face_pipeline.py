"""The face pipeline on real photos: detection, alignment, embeddings, quality gate, face selection."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from veilface.config import load_settings
from veilface.errors import InvalidImage, MultipleFaces, NoFace, PoorQuality
from veilface.face import (
    Detection,
    Face,
    FacePipeline,
    Recognizer,
    align_face,
    assess,
)
from veilface.face.align import ARCFACE_TEMPLATE, similarity_transform
from veilface.models.builtins import builtin
from veilface.models.registry import ModelRegistry

SETTINGS = load_settings()
LFW = SETTINGS.data_dir / "lfw" / "images"
CFP = SETTINGS.data_dir / "cfp" / "images"

pytestmark = pytest.mark.skipif(
    not (LFW.exists() and SETTINGS.shared_models_dir.exists()), reason="shared data or models not available"
)


def lfw_path(name: str, number: int):
    return LFW / name / f"{name}_{number:04d}.jpg"


def read(path) -> np.ndarray:
    return cv2.imread(str(path))


def jpeg(img: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()


@pytest.fixture(scope="module")
def pipeline() -> FacePipeline:
    return FacePipeline.from_settings(SETTINGS)


@pytest.fixture(scope="module")
def abel(pipeline) -> Face:
    (face,) = pipeline.analyze(lfw_path("Abel_Pacheco", 1).read_bytes())
    return face


def test_properties(pipeline):
    assert pipeline.model_name == SETTINGS.recognizer
    assert pipeline.dim == ModelRegistry(SETTINGS).get(SETTINGS.recognizer).dim
    assert set(pipeline.providers) == {"detector", "recognizer"}
    assert all(p.endswith("ExecutionProvider") for p in pipeline.providers.values())


def test_lfw_photo_gives_one_sane_face(abel, pipeline):
    x, y, w, h = abel.box
    assert 50 < w < 200 and 50 < h < 200
    assert 60 < x + w / 2 < 190 and 60 < y + h / 2 < 190  # LFW faces are centred in 250x250
    eyes, nose, mouth = abel.landmarks[:2], abel.landmarks[2], abel.landmarks[3:]
    assert eyes[0, 0] < eyes[1, 0] and eyes[:, 1].max() < nose[1] < mouth[:, 1].min()
    assert x <= abel.landmarks[:, 0].min() and abel.landmarks[:, 0].max() <= x + w
    assert abel.score > 0.5 and abel.quality_reason is None
    assert abel.embedding.dtype == np.float32 and abel.embedding.shape == (pipeline.dim,)
    assert np.linalg.norm(abel.embedding) == pytest.approx(1.0, abs=1e-5)


def test_embedding_stays_out_of_repr(abel):
    assert "embedding" not in repr(abel)


def test_cfp_profile_faces_are_found(pipeline):
    images = [CFP / f"{identity:03d}" / "profile" / f"0{n}.jpg" for identity in range(1, 11) for n in (1, 3)]
    found = sum(bool(pipeline.detector.detect(read(path))) for path in images)
    assert found / len(images) >= 0.9


def test_tight_crop_coordinates_refer_to_the_original_image(pipeline):
    img = read(CFP / "001" / "profile" / "01.jpg")
    (detection, *_) = pipeline.detector.detect(img)
    height, width = img.shape[:2]
    x, y, w, h = detection.box
    assert x >= 0 and y >= 0 and x + w <= width and y + h <= height and w > width / 3


def test_same_person_is_closer_than_different_people(pipeline):
    def embedding(name, number):
        faces = pipeline.analyze(lfw_path(name, number).read_bytes())
        return max(faces, key=lambda f: f.area).embedding

    same = [("Abel_Pacheco", 1, 4), ("Akhmed_Zakayev", 1, 3), ("Amber_Tamblyn", 1, 2)]
    anchors = {name: embedding(name, i) for name, i, _ in same}
    same_sims = [float(anchors[name] @ embedding(name, j)) for name, _, j in same]
    names = list(anchors)
    diff_sims = [float(anchors[a] @ anchors[b]) for i, a in enumerate(names) for b in names[i + 1 :]]
    assert min(same_sims) > max(diff_sims)
    assert min(same_sims) > 0.3 > max(diff_sims)


def test_alignment_output(abel):
    aligned = align_face(read(lfw_path("Abel_Pacheco", 1)), abel.landmarks)
    assert aligned.shape == (112, 112, 3) and aligned.dtype == np.uint8
    assert align_face(read(lfw_path("Abel_Pacheco", 1)), abel.landmarks, size=224).shape == (224, 224, 3)


@pytest.mark.parametrize("size", [112, 224])
def test_alignment_moves_landmarks_onto_the_template(size):
    angle = np.deg2rad(25)
    rotation = 1.8 * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    landmarks = ARCFACE_TEMPLATE @ rotation.T + (150, 40)
    canvas = np.zeros((400, 400, 3), np.uint8)
    for x, y in landmarks:
        cv2.circle(canvas, (round(x), round(y)), 3, (255, 255, 255), -1)
    aligned = cv2.cvtColor(align_face(canvas, landmarks, size=size), cv2.COLOR_BGR2GRAY)
    for x, y in ARCFACE_TEMPLATE * size / 112:
        assert aligned[round(y), round(x)] > 200


def test_similarity_fit_is_least_squares_over_all_five_points():
    rng = np.random.default_rng(0)
    angle = np.deg2rad(-30)
    rotation = 2.5 * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    exact = ARCFACE_TEMPLATE @ rotation.T + (80, 20)
    np.testing.assert_allclose(
        similarity_transform(exact, ARCFACE_TEMPLATE) @ np.append(exact[0], 1), ARCFACE_TEMPLATE[0], atol=1e-4
    )
    noisy = exact + rng.normal(0, 6, exact.shape)
    noisy[4] += (25, -15)  # one point far off, as on a profile face: it still counts
    matrix = similarity_transform(noisy, ARCFACE_TEMPLATE)
    # OpenCV's fit, made to keep every point as an inlier, refines to the same least-squares optimum.
    reference, _ = cv2.estimateAffinePartial2D(
        noisy.astype(np.float32), ARCFACE_TEMPLATE, method=cv2.RANSAC, ransacReprojThreshold=1e9
    )
    np.testing.assert_allclose(matrix, reference, atol=1e-4)
    with pytest.raises(ValueError, match="similarity"):
        similarity_transform(np.ones((5, 2)), ARCFACE_TEMPLATE)


def test_embedding_does_not_depend_on_the_batch(abel, pipeline):
    img = read(lfw_path("Abel_Pacheco", 1))
    crops = [align_face(img, abel.landmarks), align_face(img, abel.landmarks + 3.0)]
    together = pipeline.recognizer.embed(crops)
    alone = np.vstack([pipeline.recognizer.embed([crop]) for crop in crops])
    assert together.shape == (2, pipeline.dim)
    np.testing.assert_allclose(together, alone, atol=1e-5)
    assert pipeline.recognizer.embed([]).shape == (0, pipeline.dim)


@pytest.mark.parametrize("name", ["edgeface_xxs", "mobilefacenet"])
@pytest.mark.parametrize("flip", [True, False])
def test_every_builtin_recognizer_embeds_a_batch(name, flip, abel):
    recognizer = Recognizer.from_version(ModelRegistry(SETTINGS).get(name), flip_fusion=flip)
    crop = align_face(read(lfw_path("Abel_Pacheco", 1)), abel.landmarks)
    embeddings = recognizer.embed([crop, crop[:, ::-1].copy(), crop])
    assert embeddings.shape == (3, builtin(name).dim) and embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(embeddings[0], embeddings[2], atol=1e-5)
    if flip:  # the fused embedding of a face and of its mirror image is the same
        np.testing.assert_allclose(embeddings[0], embeddings[1], atol=1e-5)


def test_the_ensemble_version_joins_its_members_on_the_same_crop(abel):
    registry = ModelRegistry(SETTINGS)
    ensemble = FacePipeline.from_model(SETTINGS, registry.get("edgeface_xs_xxs"))
    assert ensemble.model_name == "edgeface_xs_xxs" and ensemble.dim == 1024
    (face,) = ensemble.analyze(lfw_path("Abel_Pacheco", 1).read_bytes())
    crop = align_face(read(lfw_path("Abel_Pacheco", 1)), abel.landmarks)
    members = [Recognizer.from_version(registry.get(name)) for name in ("edgeface_xs", "edgeface_xxs")]
    parts = [member.embed([crop])[0] for member in members]
    expected = np.concatenate(parts) / np.sqrt(2)
    np.testing.assert_allclose(face.embedding, expected, atol=1e-5)
    assert np.linalg.norm(face.embedding) == pytest.approx(1.0, abs=1e-5)


def test_unknown_recognizer_is_named():
    with pytest.raises(KeyError, match="edgeface_xs"):
        builtin("facenet")


def test_quality_gate_passes_real_faces_including_profiles(pipeline):
    images = [lfw_path("Abel_Pacheco", 1), lfw_path("Amber_Tamblyn", 2), CFP / "002" / "profile" / "02.jpg"]
    for path in images:
        img = read(path)
        detection = max(pipeline.detector.detect(img), key=lambda d: d.area)
        assert assess(img, detection) is None, path


def test_quality_gate_refuses_a_blurred_face(abel):
    blurred = cv2.GaussianBlur(read(lfw_path("Abel_Pacheco", 1)), (0, 0), 8)
    detection = Detection(box=abel.box, score=abel.score, landmarks=abel.landmarks)
    assert assess(blurred, detection).startswith("face too blurred")


def test_quality_gate_refuses_a_tiny_face(pipeline):
    small = cv2.resize(read(lfw_path("Abel_Pacheco", 1)), (48, 48), interpolation=cv2.INTER_AREA)
    (face,) = pipeline.analyze(jpeg(small))
    assert max(face.box[2:]) < 30
    assert face.quality_reason.startswith("face too small")


def test_enrollment_selection(pipeline, abel):
    two_people = np.hstack([read(lfw_path("Abel_Pacheco", 1)), read(lfw_path("Amber_Tamblyn", 2))])
    faces = pipeline.analyze(jpeg(two_people))
    assert len(faces) == 2
    with pytest.raises(MultipleFaces):
        pipeline.select_for_enrollment(faces, main=False)
    assert pipeline.select_for_enrollment(faces, main=True) is faces[0]
    assert pipeline.select_for_enrollment([abel], main=False) is abel

    with pytest.raises(NoFace):
        pipeline.select_for_enrollment(pipeline.analyze(jpeg(np.full((200, 200, 3), 128, np.uint8))), True)
    blurred = cv2.GaussianBlur(read(lfw_path("Abel_Pacheco", 1)), (0, 0), 8)
    with pytest.raises(PoorQuality, match="blurred"):
        pipeline.select_for_enrollment(pipeline.analyze(jpeg(blurred)), main=False)


def test_the_main_face_is_the_centred_subject_not_a_larger_bystander(pipeline):
    canvas = np.full((500, 1300, 3), 255, np.uint8)
    canvas[50:450, :400] = cv2.resize(read(lfw_path("Amber_Tamblyn", 2)), (400, 400))  # at the edge
    canvas[125:375, 525:775] = read(lfw_path("Abel_Pacheco", 1))  # 250x250, centred
    faces = pipeline.analyze(jpeg(canvas))
    assert len(faces) == 2
    main, bystander = faces
    assert bystander.area > 2 * main.area
    assert 525 < main.box[0] < main.box[0] + main.box[2] < 775


def test_invalid_upload_is_refused(pipeline):
    with pytest.raises(InvalidImage):
        pipeline.analyze(b"not an image")
