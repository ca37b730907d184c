"""The spine: config validation, the stage registry, dvc.yaml and the environment files agree."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from facecaption.core import config as fc_config
from facecaption import workflow as W
from facecaption.cli import main

from conftest import ROOT

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
            for out in do["outs"]:
                out = next(iter(out)) if isinstance(out, dict) else out
                declared.add((out.replace("${item}", item) if item else out, name))
    assert planned == declared


def test_registry_outputs_are_unique_and_rules_exist():
    cfg = fc_config.load([ROOT / "config.yaml"])
    shards = W.shard_ids(cfg)
    outs = [o for name, st in W.STAGES.items() for sh in (shards if st.per_shard else [None])
            for o in W.stage_outs(name, sh)]
    assert len(outs) == len(set(outs))
    rules_text = "".join(p.read_text() for p in (ROOT / "rules").glob("*.smk"))
    for name in W.needed_stages(cfg):
        assert f"rule {name}:" in rules_text


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
