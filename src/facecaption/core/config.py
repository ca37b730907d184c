"""Configuration: one JSON schema (assembled from ``schema/*.yaml``) validates the merged config.

``config.yaml`` is the embedded default; overlays (``config/*.yaml``) are merged over it in order.
Validation fills in schema defaults and stops at the first problem with one line that names the key
and what is allowed, e.g.::

    config error: faces.min_size: -3 is not allowed; allowed: integer >= 0
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

import jsonschema
import yaml


class ConfigError(ValueError):
    """A config problem, with a one-line message naming the key."""


class SourceError(ConfigError):
    """A source input problem (missing file, bad column), as one line naming the config key and the path."""


def require_path(path, key: str, kind: str = "file") -> Path:
    """``path`` (``~`` expanded) if it exists, else stop with one line naming the config key and the path."""
    if path is None or str(path) == "":
        raise SourceError(f"config error: {key}: not set; give the {kind} to read")
    p = Path(str(path)).expanduser()
    if not p.exists():
        raise SourceError(f"config error: {key}: {p} does not exist")
    return p


def schema() -> dict:
    """The full schema: ``schema/base.yaml`` plus one fragment per top-level section."""
    folder = resources.files("facecaption") / "schema"
    full = yaml.safe_load((folder / "base.yaml").read_text())
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".yaml") and entry.name != "base.yaml":
            full["properties"][entry.name[: -len(".yaml")]] = yaml.safe_load(entry.read_text())
    return full


def deep_merge(base: dict, over: dict) -> dict:
    """Merge ``over`` into a copy of ``base``; nested dicts merge, everything else replaces."""
    out = copy.deepcopy(base)
    for key, value in (over or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _with_defaults(cls):
    validate_props = cls.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for prop, sub in properties.items():
                if "default" in sub and prop not in instance:
                    instance[prop] = copy.deepcopy(sub["default"])
                if sub.get("type") == "object" and prop not in instance and "properties" in sub:
                    instance[prop] = {}
        yield from validate_props(validator, properties, instance, schema)

    return jsonschema.validators.extend(cls, {"properties": set_defaults})


_Validator = _with_defaults(jsonschema.Draft202012Validator)


def _allowed(err: jsonschema.ValidationError) -> str:
    s = err.schema if isinstance(err.schema, dict) else {}
    if err.validator == "additionalProperties":
        return "known keys: " + ", ".join(sorted(s.get("properties", {})))
    if "enum" in s:
        return "one of " + ", ".join(json.dumps(v) for v in s["enum"])
    if "description" in s and err.validator not in ("minimum", "maximum", "type"):
        return s["description"]
    kind = s.get("type", "value")
    kind = " or ".join(kind) if isinstance(kind, list) else kind
    bounds = []
    if "minimum" in s:
        bounds.append(f">= {s['minimum']}")
    if "exclusiveMinimum" in s:
        bounds.append(f"> {s['exclusiveMinimum']}")
    if "maximum" in s:
        bounds.append(f"<= {s['maximum']}")
    if "exclusiveMaximum" in s:
        bounds.append(f"< {s['exclusiveMaximum']}")
    if "minItems" in s:
        bounds.append(f"at least {s['minItems']} items")
    if "pattern" in s:
        bounds.append(f"matching {s['pattern']}")
    return ", ".join([kind, *bounds]) if bounds else kind


def validate(config: dict) -> dict:
    """Validate ``config`` in place (defaults filled in) and return it; raise ``ConfigError``."""
    if not isinstance(config, dict):
        raise ConfigError("config error: the config must be a mapping of keys to values")
    validator = _Validator(schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(e.absolute_path), str(e.absolute_path)))
    if errors:
        err = errors[0]
        path = ".".join(str(p) for p in err.absolute_path)
        if err.validator == "additionalProperties":
            allowed = set(err.schema.get("properties", {}))
            extra = sorted(k for k in err.instance if k not in allowed)
            key = ".".join(filter(None, [path, extra[0] if extra else "?"]))
            raise ConfigError(f"config error: {key}: unknown key; {_allowed(err)}")
        if err.validator == "required":
            missing = err.message.split("'")[1] if "'" in err.message else "?"
            raise ConfigError(f"config error: {'.'.join(filter(None, [path, missing]))}: missing")
        shown = json.dumps(err.instance)
        if len(shown) > 60:
            shown = type(err.instance).__name__
        raise ConfigError(f"config error: {path or '<top>'}: {shown} is not allowed; allowed: {_allowed(err)}")
    return config


def load(files: Iterable[str | Path] = ("config.yaml",), overrides: dict | None = None) -> dict:
    """Load and merge YAML config files (later ones win), apply ``overrides``, validate."""
    merged: dict = {}
    for f in files:
        path = Path(f)
        if not path.exists():
            raise ConfigError(f"config error: config file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config error: {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
        merged = deep_merge(merged, data)
    if overrides:
        merged = deep_merge(merged, overrides)
    return validate(merged)


def section_json(config: dict, *keys: str) -> str:
    """The named top-level sections as canonical JSON: what a rule passes to its stage."""
    return json.dumps({k: config[k] for k in keys if k in config}, sort_keys=True, separators=(",", ":"))
