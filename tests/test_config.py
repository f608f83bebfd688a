"""Settings from the environment."""

from __future__ import annotations

from pathlib import Path

from veilface.config import load_settings, path_environ


def test_settings_parse_the_environment_and_children_get_absolute_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = load_settings(
        {"VEILFACE_VAR_DIR": "var/bench", "VEILFACE_FLIP_FUSION": "off", "VEILFACE_ONNX_THREADS": "3"}
    )
    assert settings.var_dir == Path("var/bench") and not settings.flip_fusion and settings.onnx_threads == 3
    environ = path_environ(settings)
    # gunicorn and the workers start in services/*: a relative folder would point elsewhere there.
    assert environ["VEILFACE_VAR_DIR"] == str(tmp_path / "var" / "bench")
    assert all(Path(value).is_absolute() for value in environ.values())
    assert "VEILFACE_KEY_DIR" not in environ  # unset: each process derives it from the var folder
