"""Which photos the identify benchmarks enroll and search: ``veilface.bench.identify.gallery_split``."""

from __future__ import annotations

from pathlib import Path

from veilface.bench.identify import gallery_split, person_of, subject_of
from veilface.config import load_settings


def test_subjects_name_one_photo_and_their_person():
    lfw = Path("data/lfw/images/Aaron_Peirsol/Aaron_Peirsol_0002.jpg")
    cfp = Path("data/cfp/images/017/profile/03.jpg")
    assert subject_of(lfw) == "Aaron_Peirsol_0002" and person_of(subject_of(lfw)) == "Aaron_Peirsol"
    assert subject_of(cfp) == "cfp_017_profile_03" and person_of(subject_of(cfp)) == "cfp_017"


def test_a_1000_photo_gallery_is_lfw_people_with_one_photo_after_the_queries():
    photos, pairs = gallery_split(load_settings(), 1000, 50)
    assert len(photos) == 1000 and len(pairs) == 50
    assert photos[:50] == [enrolled for enrolled, _ in pairs]
    assert all(len(list(p.parent.glob("*.jpg"))) == 1 for p in photos[50:])


def test_a_10000_photo_gallery_adds_more_photos_of_lfw_people_then_cfp():
    photos, pairs = gallery_split(load_settings(), 10_000, 50)
    subjects = [subject_of(p) for p in photos]
    assert len(photos) == 10_000 and len(set(subjects)) == 10_000
    assert not {probe for _, probe in pairs} & set(photos)  # held-back photos are never enrolled
    assert all(person_of(subject_of(enrolled)) == person_of(subject_of(probe)) for enrolled, probe in pairs)
    assert any(s.startswith("cfp_") for s in subjects)
    people = [person_of(s) for s in subjects]
    assert len(set(people)) < len(people) / 1.5  # several photos of many people
