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
    _check_across(config)
    return config


def _check_across(config: dict) -> None:
    """Rules between sections that one section's schema cannot state."""
    train, audit = config.get("train") or {}, config.get("audit") or {}
    if (train.get("exclude_contaminated") in ("identity", "any") and audit.get("embedder") == "flip"
            and not audit.get("checkpoint")):
        raise ConfigError("config error: train.exclude_contaminated: the audit runs before training then, so this "
                          "run's FLIP cannot be its identity embedder; set audit.checkpoint (an earlier FLIP) or "
                          "audit.embedder: insightface")


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


class UndeclaredConfig(ConfigError):
    """A stage read a config section it does not declare (its ``params`` in :mod:`facecaption.workflow`)."""


class StageConfig(dict):
    """A stage's view of the config: the sections it declares, and an error for any other.

    Reading an undeclared section (``cfg["seed"]``, ``cfg.get("seed", 0)``, ``"seed" in cfg``) raises
    :class:`UndeclaredConfig` instead of falling back to a default: a value the stage reads but does not
    declare is not in its rerun key, so a change to it would silently not re-run the stage (or, read with
    a default, the stage would silently disagree with the stages that do declare it)."""

    def __init__(self, stage: str, data: dict, declared):
        self.stage = stage
        self.declared = frozenset(declared)
        super().__init__({k: v for k, v in data.items() if k in self.declared})

    def _check(self, key) -> None:
        if key not in self.declared:
            raise UndeclaredConfig(f"config error: the {self.stage} stage reads config section {key!r}, which it does "
                                   f"not declare (declared: {', '.join(sorted(self.declared))}); add it to its params "
                                   f"in facecaption/workflow.py")

    def __getitem__(self, key):
        self._check(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self._check(key)
        return super().get(key, default)

    def __contains__(self, key) -> bool:
        self._check(key)
        return super().__contains__(key)

    def setdefault(self, key, default=None):
        self._check(key)
        return super().setdefault(key, default)

    def __reduce__(self):
        return StageConfig, (self.stage, dict(self), tuple(self.declared))

    def __deepcopy__(self, memo):
        return StageConfig(self.stage, copy.deepcopy(dict(self), memo), self.declared)


def split_keys(config: dict, sections, runtime) -> tuple[dict, dict]:
    """The ``sections`` of ``config`` as (result keys, runtime keys): ``runtime`` (dotted keys, e.g.
    ``faces.batch_size``) are moved from the first dict to the second. The first is a stage's rerun key."""
    result = {k: copy.deepcopy(dict.__getitem__(config, k)) for k in sections if dict.__contains__(config, k)}
    run: dict = {}
    for dotted in runtime:
        *parents, leaf = dotted.split(".")
        node, out = result, run
        for part in parents:
            if not isinstance(node, dict) or part not in node:
                node = None
                break
            node = node[part]
            out = out.setdefault(part, {})
        if isinstance(node, dict) and leaf in node:
            out[leaf] = node.pop(leaf)
    return result, _prune(run)


def _prune(d: dict) -> dict:
    return {k: _prune(v) if isinstance(v, dict) else v for k, v in d.items() if not (isinstance(v, dict) and not _prune(v))}


def canonical_json(data: dict) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"))
