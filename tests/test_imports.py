"""The import rule: data flows one way, and stages stand on the core, never on each other.

* ``facecaption.core`` imports nothing else of facecaption;
* ``facecaption.synthface`` (the renderer and its ground truth, a library) imports only the core;
* a stage (``collect``, ``labeled``, ``faces``, ``attributes``, ``captions``, ``train``, ``evaluate``,
  ``quality``, and the ``cost``, ``ablation`` and ``paper`` modules) imports only the core, synthface and itself;
* the stage registry (``facecaption.workflow``) imports only the core, so building the DAG imports no stage;
* only the orchestration (``cli``, ``dvcyaml``, ``preflight``) imports the registry and the stages.

Every import counts, also those inside functions (lazy imports are still dependencies).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from facecaption.dvcyaml import imports_of as _imports_of

PKG = Path(__file__).resolve().parents[1] / "src" / "facecaption"
STAGES = {"collect", "labeled", "faces", "attributes", "captions", "train", "evaluate", "audit", "quality", "cost",
          "ablation", "paper"}
LIBRARIES = {"core", "synthface"}
ORCHESTRATION = {"cli", "dvcyaml", "preflight", "__main__", ""}  # "": the package itself


def _modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).with_suffix("")
        yield ".".join(("facecaption", *rel.parts)).removesuffix(".__init__"), path


def imports_of(module: str, path: Path) -> set[str]:
    """The facecaption modules ``path`` imports (the dvc.yaml generator's code dependencies use the same)."""
    return _imports_of(module, path, PKG.parent)


def top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def allowed(importer: str, imported: str) -> bool:
    src, dst = top(importer), top(imported)
    if imported == "facecaption":
        return src in ORCHESTRATION
    if src == "core":
        return dst == "core"
    if src == "synthface":
        return dst in {"core", "synthface"}
    if src == "workflow":
        return dst == "core"
    if src in STAGES:
        return dst in LIBRARIES or dst == src
    return src in ORCHESTRATION


def test_every_module_is_classified():
    kinds = STAGES | LIBRARIES | ORCHESTRATION | {"workflow"}
    unknown = sorted({top(m) for m, _ in _modules()} - kinds)
    assert not unknown, f"modules not covered by the import rule: {unknown}; add them to a layer here"


def test_import_rule():
    broken = [f"{m} imports {i}" for m, p in _modules() for i in sorted(imports_of(m, p)) if not allowed(m, i)]
    assert not broken, "the import rule is broken:\n" + "\n".join(broken)


@pytest.mark.parametrize("importer, imported, ok", [
    ("facecaption.faces.report", "facecaption.core.shards", True),
    ("facecaption.faces.report", "facecaption.faces.accounting", True),
    ("facecaption.quality.report", "facecaption.train", False),  # a stage on another stage
    ("facecaption.evaluate.encoders", "facecaption.core.openclip", True),
    ("facecaption.core.shards", "facecaption.faces.decode", False),  # the core on a stage
    ("facecaption.workflow", "facecaption.collect.urls", False),  # the registry on a stage
    ("facecaption.train", "facecaption.workflow", False),  # a stage on the registry
    ("facecaption.cli", "facecaption.train", True),
])
def test_the_rule_itself(importer, imported, ok):
    assert allowed(importer, imported) is ok


def test_relative_and_lazy_imports_are_seen(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from ..train import system\n    import facecaption.workflow\n")
    assert imports_of("facecaption.quality.m", f) >= {"facecaption.train.system",
                                                      "facecaption.workflow"}
