"""Typed settings: defaults, then HOME/animexpr.toml, then environment, then command-line options."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from animexpr.errors import ConfigError

CONFIG_FILE_NAME = "animexpr.toml"
RUNS_DIR_NAME = "runs"
CACHE_ENV_VARIABLE = "ANIMEXPR_CACHE"
DEFAULT_HOME = Path("animexpr-home")
# The paper's four classes, each searched on Danbooru by the tag of the same name.
DEFAULT_CLASS_TAGS: dict[str, tuple[str, ...]] = {
    "angry": ("angry",),
    "sad": ("sad",),
    "smile": ("smile",),
    "surprised": ("surprised",),
}
_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
# Danbooru tags: no whitespace, no commas (they separate tags in our own syntax).
_TAG_PATTERN = re.compile(r"^[^\s,]+$")
_KNOWN_FILE_KEYS = {"db", "classes"}


@dataclass(frozen=True)
class ClassSpec:
    """One expression class and the Danbooru tag(s) that find it (a post matches any of them)."""

    name: str
    tags: tuple[str, ...]


@dataclass(frozen=True)
class Settings:
    home: Path
    db_url: str
    classes: tuple[ClassSpec, ...] = field(
        default_factory=lambda: tuple(ClassSpec(n, t) for n, t in DEFAULT_CLASS_TAGS.items())
    )

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.classes)

    def class_spec(self, name: str) -> ClassSpec:
        for spec in self.classes:
            if spec.name == name:
                return spec
        raise ConfigError(f"unknown class {name!r}; known classes: {', '.join(self.class_names)}")

    @property
    def config_file(self) -> Path:
        return self.home / CONFIG_FILE_NAME

    @property
    def runs_dir(self) -> Path:
        """Where `train` numbers its runs, and where `transform` and `status` look for them."""
        return self.home / RUNS_DIR_NAME


def user_cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Downloaded weights and files: $ANIMEXPR_CACHE, $XDG_CACHE_HOME/animexpr or ~/.cache/animexpr."""
    env = os.environ if environ is None else environ
    if env.get(CACHE_ENV_VARIABLE):
        return Path(env[CACHE_ENV_VARIABLE]).expanduser()
    return xdg_cache_home(env) / "animexpr"


def xdg_cache_home(environ: Mapping[str, str] | None = None) -> Path:
    """$XDG_CACHE_HOME, or ~/.cache when it is unset or empty (the XDG spec: an empty value means unset)."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_CACHE_HOME") or str(Path(env.get("HOME") or Path.home()) / ".cache")
    return Path(base).expanduser()


def default_db_url(home: Path) -> str:
    return f"sqlite:///{(home / 'animexpr.sqlite3').resolve()}"


def parse_class_list(text: str, source: str) -> dict[str, tuple[str, ...]]:
    """Parse `name:tag+tag,name:tag` (the environment / option syntax); a bare `name` means tag == name."""
    classes: dict[str, tuple[str, ...]] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, tags = item.partition(":")
        classes[name.strip()] = tuple(t.strip() for t in (tags or name).split("+") if t.strip())
    if not classes:
        raise ConfigError(f"{source}: empty class list")
    return classes


def load_settings(
    home: Path | str | None = None,
    db: str | None = None,
    classes: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Resolve the settings; each argument given here overrides the environment, which overrides the file."""
    env = os.environ if environ is None else environ
    home_path = Path(home or env.get("ANIMEXPR_HOME") or DEFAULT_HOME).expanduser()
    file_values = _read_config_file(home_path / CONFIG_FILE_NAME)

    class_tags = DEFAULT_CLASS_TAGS
    if "classes" in file_values:
        class_tags = _classes_from_file(file_values["classes"])
    if env.get("ANIMEXPR_CLASSES"):
        class_tags = parse_class_list(env["ANIMEXPR_CLASSES"], "ANIMEXPR_CLASSES")
    if classes:
        class_tags = parse_class_list(classes, "--classes")

    db_url = db or env.get("ANIMEXPR_DB") or file_values.get("db") or default_db_url(home_path)
    if not isinstance(db_url, str) or "://" not in db_url:
        raise ConfigError(
            f"db: expected a database URL like sqlite:///path or postgresql://..., got {db_url!r}"
        )
    settings = Settings(
        home=home_path,
        db_url=db_url,
        classes=tuple(ClassSpec(name, tags) for name, tags in class_tags.items()),
    )
    _validate_classes(settings.classes)
    return settings


def _read_config_file(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from exc
    unknown = sorted(set(values) - _KNOWN_FILE_KEYS)
    if unknown:
        raise ConfigError(
            f"{path}: unknown key {unknown[0]!r} (known keys: {', '.join(sorted(_KNOWN_FILE_KEYS))})"
        )
    return values


def _classes_from_file(value: Any) -> dict[str, tuple[str, ...]]:
    if not isinstance(value, dict) or not value:
        raise ConfigError('classes: expected a table like `smile = ["smile"]`')
    classes: dict[str, tuple[str, ...]] = {}
    for name, tags in value.items():
        if isinstance(tags, str):
            tags = [tags]
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise ConfigError(f"classes.{name}: expected a tag or a list of tags")
        classes[name] = tuple(tags)
    return classes


def _validate_classes(classes: tuple[ClassSpec, ...]) -> None:
    if len(classes) < 2:
        raise ConfigError("classes: at least two classes are needed to translate between expressions")
    for spec in classes:
        if not _NAME_PATTERN.match(spec.name):
            raise ConfigError(f"classes.{spec.name}: a class name uses lowercase letters, digits, '_' or '-'")
        if not spec.tags:
            raise ConfigError(f"classes.{spec.name}: no Danbooru tag given")
        for tag in spec.tags:
            if not _TAG_PATTERN.match(tag):
                raise ConfigError(f"classes.{spec.name}: {tag!r} is not a Danbooru tag (no spaces or commas)")
