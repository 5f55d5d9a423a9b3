"""Settings: defaults, then the TOML file, then the environment, then options; errors name the bad key."""

from __future__ import annotations

from pathlib import Path

import pytest

from animexpr.config import ClassSpec, load_settings
from animexpr.errors import ConfigError


def test_defaults_are_the_papers_four_classes(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path, environ={})
    assert settings.class_names == ("angry", "sad", "smile", "surprised")
    assert all(spec.tags == (spec.name,) for spec in settings.classes)
    assert settings.db_url == f"sqlite:///{(tmp_path / 'animexpr.sqlite3').resolve()}"


def test_home_from_environment_then_option(tmp_path: Path) -> None:
    env = {"ANIMEXPR_HOME": str(tmp_path / "from-env")}
    assert load_settings(environ=env).home == tmp_path / "from-env"
    assert load_settings(home=tmp_path / "opt", environ=env).home == tmp_path / "opt"
    assert load_settings(environ={}).home == Path("animexpr-home")


def test_file_then_environment_then_option(tmp_path: Path) -> None:
    (tmp_path / "animexpr.toml").write_text(
        'db = "sqlite:///from-file.db"\n[classes]\nhappy = ["smile", "laughing"]\ncry = "crying"\n'
    )
    from_file = load_settings(home=tmp_path, environ={})
    assert from_file.db_url == "sqlite:///from-file.db"
    assert from_file.classes == (ClassSpec("happy", ("smile", "laughing")), ClassSpec("cry", ("crying",)))

    env = {"ANIMEXPR_DB": "sqlite:///from-env.db", "ANIMEXPR_CLASSES": "angry,sad:sad+crying"}
    from_env = load_settings(home=tmp_path, environ=env)
    assert from_env.db_url == "sqlite:///from-env.db"
    assert from_env.classes == (ClassSpec("angry", ("angry",)), ClassSpec("sad", ("sad", "crying")))

    from_option = load_settings(home=tmp_path, db="postgresql://u@h/db", classes="a:x,b:y", environ=env)
    assert from_option.db_url == "postgresql://u@h/db"
    assert from_option.class_names == ("a", "b")


def test_settings_are_frozen(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path, environ={})
    with pytest.raises(AttributeError):
        settings.db_url = "sqlite:///other.db"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("file_text", "message"),
    [
        ('dbb = "sqlite:///x"\n', "unknown key 'dbb'"),
        ('db = "not a url"\n', "db: expected a database URL"),
        ("[classes]\nsmile = 3\nsad = 'sad'\n", "classes.smile: expected a tag"),
        ("[classes]\nsmile = ['smile']\n", "at least two classes"),
        ("[classes]\nSmile = ['smile']\nsad = 'sad'\n", "classes.Smile: a class name"),
        (
            "[classes]\nsmile = ['two words']\nsad = 'sad'\n",
            "classes.smile: 'two words' is not a Danbooru tag",
        ),
        ("[classes]\nsmile = []\nsad = 'sad'\n", "classes.smile: no Danbooru tag"),
        ("db = \n", "not valid TOML"),
    ],
)
def test_errors_name_the_bad_key(tmp_path: Path, file_text: str, message: str) -> None:
    (tmp_path / "animexpr.toml").write_text(file_text)
    with pytest.raises(ConfigError, match=message):
        load_settings(home=tmp_path, environ={})


def test_bad_environment_class_list_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ANIMEXPR_CLASSES: empty class list"):
        load_settings(home=tmp_path, environ={"ANIMEXPR_CLASSES": " , "})
