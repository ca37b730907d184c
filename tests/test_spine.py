"""The spine: config validation, the stage registry, dvc.yaml and the environment files agree."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from conftest import ROOT

from facecaption import workflow as W
from facecaption.cli import main
from facecaption.collect.plan import shard_ids
from facecaption.core import config as fc_config

SNAKEMAKE = [sys.executable, "-m", "snakemake"]


@pytest.mark.parametrize("override, key", [
    ({"bogus": 1}, "bogus: unknown key"),
    ({"seed": -1}, "seed: -1 is not allowed"),
    ({"seed": "x"}, 'seed: "x" is not allowed'),
    ({"source": "ftp"}, 'source: "ftp" is not allowed; allowed: one of "synthface", "urls", "folder"'),
    ({"synthface": {"num_shards": 0}}, "synthface.num_shards: 0 is not allowed; allowed: integer, >= 1"),
    ({"synthface": {"typo": 3}}, "synthface.typo: unknown key"),
    ({"synthface": {"face_scale": [0.5]}}, "synthface.face_scale: [0.5] is not allowed"),
    ({"align": {"size": "big"}}, 'align.size: "big" is not allowed'),
    ({"resources": {"faces": {"threads": 0}}}, "resources.faces.threads: 0 is not allowed"),
])
def test_bad_config_names_the_key(override, key):
    base = yaml.safe_load((ROOT / "config.yaml").read_text())
    with pytest.raises(fc_config.ConfigError) as err:
        fc_config.validate(fc_config.deep_merge(base, override))
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("config error: ")
    assert key in message


def test_every_top_level_key_is_checked():
    """A wrong type for any top-level section stops with its name."""
    base = yaml.safe_load((ROOT / "config.yaml").read_text())
    for key in fc_config.schema()["properties"]:
        with pytest.raises(fc_config.ConfigError, match=rf"config error: {key}: "):
            fc_config.validate({**base, key: [["not", "this"]]})


def test_defaults_are_filled_in():
    cfg = fc_config.validate({})
    assert cfg["seed"] == 0 and cfg["source"] == "synthface"
    assert cfg["synthface"]["num_shards"] >= 1
    assert cfg["align"]["size"] == 224


def test_cli_reports_config_error_in_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("synthface: {images_per_shard: -5}\n")
    assert main(["collect", "--config", str(ROOT / "config.yaml"), "--config", str(bad), "--shard", "00000"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["config error: synthface.images_per_shard: -5 is not allowed; allowed: integer, >= 1"]


def test_snakemake_stops_before_any_job_on_bad_config(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("synthface: {num_shards: many}\n")
    proc = subprocess.run([*SNAKEMAKE, "-n", "--configfile", str(bad)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("config error")]
    assert lines == ['config error: synthface.num_shards: "many" is not allowed; allowed: integer, >= 1']
    assert "rule " not in proc.stdout


def test_dvc_yaml_is_generated_from_the_registry():
    proc = subprocess.run([sys.executable, "-m", "facecaption", "dvc-yaml", "--check"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_snakemake_and_dvc_plan_the_same_outputs():
    """Every output Snakemake plans is a DVC stage output of the same stage, and vice versa."""
    proc = subprocess.run([*SNAKEMAKE, "--detailed-summary", "--forceall"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = [ln.split("\t") for ln in proc.stdout.splitlines()[1:] if "\t" in ln]
    planned = {(r[0], r[2]) for r in rows}
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    declared = set()
    for name, body in dvc.items():
        items = body.get("foreach", [None])
        do = body.get("do", body)
        for item in items:
            for out in do["outs"] + do.get("metrics", []) + do.get("plots", []):
                out = next(iter(out)) if isinstance(out, dict) else out
                declared.add((out.replace("${item}", item) if item else out, name))
    assert planned == declared


def test_registry_outputs_are_unique_and_rules_exist():
    cfg = fc_config.load([ROOT / "config.yaml"])
    shards = shard_ids(cfg)
    outs = [o for name, st in W.STAGES.items() for sh in (shards if st.per_shard else [None])
            for o in W.stage_outputs(name, sh).values()]
    assert len(outs) == len(set(outs))
    rules_text = "".join(p.read_text() for p in (ROOT / "rules").glob("*.smk"))
    arm_rules = (ROOT / "rules" / "ablation.smk").read_text()
    for name in W.needed_stages(cfg, shards):
        kind, _, arm = name.partition("_")
        if kind in ("train", "evaluate") and arm in W.ARMS:  # one rule per arm, made in a loop over the arms
            assert f'name:\n            f"{kind}_{{_arm}}"' in arm_rules
            assert f'unpack(inputs(f"{kind}_{{_arm}}"))' in arm_rules and f'**outputs(f"{kind}_{{_arm}}")' in arm_rules
            continue
        assert f"rule {name}:" in rules_text
        assert f'unpack(inputs("{name}"))' in rules_text or not W.STAGES[name].deps
        assert f'**outputs("{name}")' in rules_text


# -- each stage gets exactly what it declares ------------------------------------------------------------------
def test_a_stage_reading_an_undeclared_section_stops():
    """The bug this catches: report_quality read `seed` without declaring it, so `seed: 7` reached the train
    stage but not its relevance sample (which fell back to 0)."""
    view = W.stage_config("report_corpus", fc_config.validate({}))
    for read in (lambda c: c["seed"], lambda c: c.get("seed", 0), lambda c: "seed" in c):
        with pytest.raises(fc_config.UndeclaredConfig, match="reads config section 'seed', which it does not declare"):
            read(view)
    assert W.stage_config("report_quality", fc_config.validate({"seed": 7}))["seed"] == 7
    assert "seed" in W.STAGES["report_quality"].config_keys


def test_every_runtime_key_exists_in_the_schema():
    cfg = fc_config.validate({})
    for dotted in W.RUNTIME:
        section, *rest = dotted.split(".")
        node = fc_config.schema()["properties"][section]
        for part in rest:
            assert part in node.get("properties", {}), f"{dotted}: no such key in the schema"
            node = node["properties"][part]
        assert section in cfg


def test_rerun_key_leaves_out_runtime_keys_only():
    base = fc_config.validate({})
    fast = fc_config.validate({"faces": {"batch_size": 8}, "urls": {"threads": 3}, "train": {"num_workers": 5}})
    slow = fc_config.validate({"faces": {"min_size": 50}})
    for stage in ("faces", "collect", "train"):
        assert W.rerun_config(stage, base)[0] == W.rerun_config(stage, fast)[0], stage
    assert W.rerun_config("faces", base)[0] != W.rerun_config("faces", slow)[0]
    assert W.rerun_config("faces", fast)[1]["faces"]["batch_size"] == 8
    assert "batch_size" not in W.rerun_config("faces", fast)[0]["faces"]


def test_files_named_in_config_are_inputs(tmp_path):
    lst = tmp_path / "optout.txt"
    grammar = tmp_path / "grammar.yaml"
    cfg = fc_config.validate({"optout": {"lists": [str(lst)]}, "captions": {"grammar": str(grammar)},
                              "train": {"init": str(tmp_path / "w.pt")}})
    assert W.stage_inputs("collect", cfg, ["00000"], "00000")["optout_lists"] == [str(lst)]
    assert W.stage_inputs("faces", cfg, ["00000"], "00000")["optout_lists"] == [str(lst)]
    assert W.stage_inputs("captions", cfg, ["00000"], "00000")["grammar"] == [str(grammar)]
    assert W.stage_inputs("train", cfg, ["00000"])["init"] == [str(tmp_path / "w.pt")]


def test_dvc_yaml_code_deps_follow_the_imports():
    """A change in a core module the stage imports (shards, rng, config) invalidates the stage in DVC;
    a stage it does not import does not."""
    from facecaption.dvcyaml import code_deps

    faces = code_deps("faces")
    for f in ("src/facecaption/core/shards.py", "src/facecaption/core/config.py", "src/facecaption/core/align.py",
              "src/facecaption/faces/detect.py", "src/facecaption/schema/faces.yaml"):
        assert f in faces, f
    assert not any(f.startswith("src/facecaption/train/") for f in faces)
    assert "src/facecaption/core/model_configs" in code_deps("train")
    collect = code_deps("collect")  # the sources are imported by name (importlib): still code deps
    assert "src/facecaption/core/rng.py" in collect and "src/facecaption/collect/url_inputs.py" in collect


def test_dvc_yaml_declares_metrics_plots_and_exact_params():
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert dvc["evaluate"]["metrics"] == [{"results/metrics/evaluate.json": {"cache": False}}]
    assert any("results/metrics/train_curve.csv" in p for p in dvc["report_train"]["plots"])
    assert all("metrics" in dvc[s] for s in ("report_corpus", "report_faces", "report_attributes",
                                             "report_captions", "report_quality", "report_train"))
    from facecaption.dvcyaml import param_keys

    keys = param_keys({"faces": {"min_score": 0.9, "batch_size": 4, "insightface": {"device": "cuda", "pack": "x"}}},
                      ("faces",))
    assert keys == ["faces.min_score", "faces.insightface.pack"]


def test_metrics_tolerances():
    from facecaption.dvcyaml import violations

    rules = [{"match": "*:*loss*", "rel": 0.05}, {"match": "*", "abs": 0.01}]
    diff = {"results/metrics/train.json": {"final_loss": {"old": 3.0, "new": 3.1}},
            "results/metrics/evaluate.json": {"probe.acc": {"old": 0.80, "new": 0.805},
                                              "r5": {"old": 20.0, "new": 23.0}, "gone": {"old": 1.0, "new": None}}}
    bad = violations(diff, rules)
    assert [b.split(":")[1] for b in bad] == ["gone", "r5"]


def test_conda_env_installs_the_lock_pins():
    lock = [ln.strip() for ln in (ROOT / "requirements.lock").read_text().splitlines() if ln.strip()]
    env = yaml.safe_load((ROOT / "envs/facecaption.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert pip == lock
    assert "python=3.11" in env["dependencies"]


def test_a_killed_writers_temporary_file_is_cleaned_on_rewrite(tmp_path):
    from facecaption.core.shards import ShardWriter

    out = tmp_path / "00000.tar"
    stale = tmp_path / ".00000.tar.tmp-99999"  # what a SIGKILLed writer leaves behind
    stale.write_bytes(b"half a shard")
    with ShardWriter(out) as w:
        w.write({"__key__": "a", "txt": "x"})
    assert out.exists() and not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00000.tar"]


# -- the caption ablation --------------------------------------------------------------------------------------
@pytest.mark.parametrize("overlay, separate", [
    ({}, ["alt_text"]),  # the main FLIP (caption = grammar without an LLM) is the grammar arm
    ({"captions": {"llm": {"enabled": True}}}, ["alt_text", "grammar"]),  # the main one is grammar + rewrite
    ({"train": {"text": "alt_text"}}, ["grammar"]),
    ({"ablation": {"texts": ["grammar", "rewritten"]}}, ["rewritten"]),
    ({"source": "release"}, ["alt_text", "released"]),
])
def test_ablation_trains_one_flip_per_arm_apart_from_the_main_one(overlay, separate):
    cfg = fc_config.validate({**overlay, "paper": {"sections": ["evaluate", "ablation"]}})
    shards = ["00000", "00001"]
    needed = W.needed_stages(cfg, shards)
    assert [a for a in W.ARMS if f"train_{a}" in needed] == sorted(separate, key=W.ARMS.index)
    assert [a for a in W.ARMS if f"evaluate_{a}" in needed] == sorted(separate, key=W.ARMS.index)
    assert "report_ablation" in needed and "train" in needed
    for arm in separate:
        assert W.stage_config(f"train_{arm}", cfg)["train"]["text"] == arm
        key = W.rerun_config(f"train_{arm}", cfg)[0]
        assert key["train"]["text"] == arm and key["seed"] == cfg["seed"]  # its own rerun key: the arm's text
        ev = W.stage_config(f"evaluate_{arm}", cfg)["evaluate"]
        assert ev["random_baseline"] is False and ev["baselines"] == [] and ev["checkpoint"] is None
        assert W.stage_inputs(f"evaluate_{arm}", cfg, shards)["model"] == f"results/ablation/{arm}/flip.pt"
    assert W.stage_config("train", cfg)["train"]["text"] == cfg["train"]["text"]  # the main FLIP is left alone
