"""urls.distributor: pyspark on a real local Spark (local[2], real JVM, real img2dataset) against the loopback
HTTP server of test_collect_urls: the same collect shard as multiprocessing, byte for byte; Spark's log in the
job's log and nowhere else; the session and its JVM stopped with the job; one line when Java or pyspark is
missing."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import ROOT, run_stage
from test_collect_urls import Server, server, url_config  # noqa: F401 (server: the loopback HTTP fixture)

import facecaption
from facecaption.collect import spark as S
from facecaption.core.shards import iter_samples, read_parquet

# url path -> expected status: one shard of 20 rows, 4 chunks of 5 (4 Spark tasks on 2 cores)
CASES = [
    ("/img/1.jpg", "success"), ("/png/2.png", "success"), ("/missing/3.jpg", "http_error"),
    ("/img/4.jpg", "success"), ("/error/5", "http_error"), ("/redirect/7", "success"),
    ("/redirect_ftp/8", "unsafe_redirect"), ("/truncated/9.jpg", "truncated"), ("/notimage/10", "decode_error"),
    ("/big/11", "too_large"), ("/bomb/13", "too_many_pixels"), ("/noai/14", "disallowed"),
    ("/img/15.jpg", "opted_out"), ("/loop/18", "http_error"), ("/img/19.jpg", "success"),
    ("/img/21.jpg", "success"), ("/png/22.png", "success"),
]


def dead_port() -> int:
    """A loopback port nobody listens on (connection refused): the dead links."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_shard_list(srv: Server, folder: Path, cases: list = CASES) -> tuple[Path, dict[str, str]]:
    """The URL list (good images, HTTP errors, dead links, ...) and the status each URL must get."""
    import pandas as pd

    port = dead_port()
    rows = [(srv.url(p), st) for p, st in cases]
    rows += [(f"http://127.0.0.1:{port}/img/{i}.jpg", "connection_error") for i in (30, 31)]
    rows += [("ftp://127.0.0.1/x.jpg", "unsafe_scheme")]
    df = pd.DataFrame({"url": [u for u, _ in rows], "caption": [f"caption {i}" for i in range(len(rows))],
                       "face_caption": [f"a face {i}" for i in range(len(rows))]})
    path = folder / "list.parquet"
    df.to_parquet(path, row_group_size=6)
    return path, dict(rows)


def shard_config(srv: Server, workdir: Path, list_path: Path, distributor: str, **over) -> dict:
    return url_config(srv, workdir, list_path, per_shard=20, chunk=5, threads=4, processes=2,
                      distributor=distributor, keep_work=True, work_dir=f"cache/{distributor}", **over)


def spark_jvms() -> list[psutil.Process]:
    """This test process's descendant JVMs running Spark (the py4j gateway's spark-submit)."""
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if "org.apache.spark.deploy.SparkSubmit" in " ".join(p.cmdline()):
                out.append(p)
        except psutil.Error:
            pass
    return out


def outputs() -> tuple[bytes, bytes]:
    return Path("results/collect/00000.tar").read_bytes(), Path("results/collect/00000.parquet").read_bytes()


@pytest.mark.slow
def test_pyspark_shard_equals_multiprocessing_shard(workdir, server, capfd):
    from pyspark import SparkContext
    from pyspark.sql import SparkSession

    list_path, expected = write_shard_list(server, workdir)
    assert SparkSession.getActiveSession() is None and not spark_jvms()

    t0 = time.perf_counter()
    cfg = shard_config(server, workdir, list_path, "pyspark", spark_master="local[2]")
    assert run_stage("collect", cfg, "00000") == 0
    spark_s = time.perf_counter() - t0
    spark_out = outputs()
    spark_table = read_parquet("results/collect/00000.parquet")
    hits_spark = dict(server.hits)
    captured = capfd.readouterr()

    # the job really went through a Spark session, which is gone with its JVM once the job ended
    ours = [ln.split("facecaption.collect.spark: ", 1)[1] for ln in captured.err.splitlines()
            if "facecaption.collect.spark: " in ln]  # the CLI's log lines (stderr)
    assert len(ours) == 2 and ours[0].startswith("spark: local[2] session started in "), captured.err[-3000:]
    assert ours[1] == "spark: local[2] session stopped"
    assert SparkSession.getActiveSession() is None and SparkContext._gateway is None
    assert not spark_jvms()
    # Spark's own log went to the job's log (here: the captured stderr), in our layout; nothing to stdout
    assert "INFO spark SparkContext: Running Spark version" in captured.err, captured.err[-3000:]
    assert "Using Spark's default log4j profile" not in captured.err + captured.out
    # ... and img2dataset's distributor ran its jobs on that session (ours: it has our log layout)
    assert "INFO spark SparkContext: Starting job: collect at " in captured.err
    assert "img2dataset/distributor.py" in captured.err
    assert "SparkContext" not in captured.out and "[Stage " not in captured.err + captured.out
    # its scratch folders were under the job's cache folder
    spark_dir = workdir / "cache/pyspark/00000/spark"
    assert (spark_dir / "log4j2.properties").is_file() and (spark_dir / "local").is_dir()

    cfg = shard_config(server, workdir, list_path, "multiprocessing")
    assert run_stage("collect", cfg, "00000") == 0
    mp_table = read_parquet("results/collect/00000.parquet")

    # statuses per URL: as expected, and the same in both modes
    got = dict(zip(spark_table["url"], spark_table["status"]))
    assert got == expected, spark_table[["url", "status", "error_message"]].to_string()
    assert list(mp_table["status"]) == list(spark_table["status"])
    assert list(mp_table["error_message"].fillna("")) == list(spark_table["error_message"].fillna(""))
    # every requested URL was fetched once per run (retries: 0), nothing twice under Spark
    assert all(n == 1 for path, n in hits_spark.items() if not path.startswith("/loop/")), hits_spark
    assert {p: 2 * n for p, n in hits_spark.items()} == dict(server.hits)
    # the shards: the same bytes (tar and parquet), holding the good images
    keys = [s["__key__"] for s in iter_samples("results/collect/00000.tar")]
    assert keys == list(spark_table.loc[spark_table.status == "success", "key"]) and len(keys) == 7
    assert outputs() == spark_out
    print(f"pyspark collect (Spark start-up included): {spark_s:.1f} s")


@pytest.mark.slow
def test_pyspark_log_file_when_stderr_is_not_a_file(workdir, server):
    """Run as a user would in a terminal (stderr not a file): Spark's log goes to <work_dir>/<shard>.spark.log,
    its settings from urls.spark_conf, the terminal gets only our lines."""
    list_path, expected = write_shard_list(server, workdir, CASES[:3])  # one chunk
    cfg = shard_config(server, workdir, list_path, "pyspark", spark_master="local[1]",
                       spark_conf={"spark.app.name": "my-crawl", "spark.driver.memory": "1g"})
    src = str(Path(facecaption.__file__).parents[1])  # the facecaption under test
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "facecaption", "collect", "--cfg", json.dumps(cfg), "--shard",
                           "00000"], cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log_file = workdir / "cache/pyspark/00000.spark.log"
    text = log_file.read_text()
    assert "INFO spark SparkContext: Running Spark version" in text
    assert "INFO spark SparkContext: Submitted application: my-crawl" in text
    terminal = proc.stdout + proc.stderr
    assert "SparkContext" not in terminal and "WARN spark" not in terminal and "INFO spark" not in terminal
    assert f"log in {log_file}" in proc.stderr
    table = read_parquet("results/collect/00000.parquet")
    assert dict(zip(table["url"], table["status"])) == expected


def _collect_error(workdir, server, capsys) -> str:
    list_path, _ = write_shard_list(server, workdir)
    cfg = shard_config(server, workdir, list_path, "pyspark")
    assert run_stage("collect", cfg, "00000") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert sum(h for h in server.hits.values()) == 0  # stopped before any download
    return err[-1]


def test_pyspark_without_java_is_one_line(workdir, server, capsys, monkeypatch):
    monkeypatch.setenv("JAVA_HOME", str(workdir / "no-jdk"))
    line = _collect_error(workdir, server, capsys)
    assert line == ("config error: urls.distributor: pyspark needs Java 17+ (apt-get install "
                    f"openjdk-17-jre-headless, or set JAVA_HOME); found no java at JAVA_HOME={workdir / 'no-jdk'}")
    monkeypatch.delenv("JAVA_HOME")
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))  # a PATH without java
    assert _collect_error(workdir, server, capsys).endswith(
        "needs Java 17+ (apt-get install openjdk-17-jre-headless, or set JAVA_HOME); "
        "found no java (JAVA_HOME unset and none on PATH)")


def test_pyspark_with_an_old_java_is_one_line(workdir, server, capsys, monkeypatch):
    jdk = workdir / "jdk11"
    (jdk / "bin").mkdir(parents=True)
    java = jdk / "bin" / "java"
    java.write_text('#!/bin/sh\necho \'openjdk version "11.0.24" 2024-07-16\' >&2\n')
    java.chmod(0o755)
    monkeypatch.setenv("JAVA_HOME", str(jdk))
    assert _collect_error(workdir, server, capsys).endswith(f"; found {java} is Java 11")


def test_pyspark_missing_is_one_line(workdir, server, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyspark", None)  # import pyspark -> ImportError, as when not installed
    assert _collect_error(workdir, server, capsys) == (
        f"config error: urls.distributor: pyspark needs the pyspark package (pip install pyspark=={S.PYSPARK_VERSION})")


def test_java_version_parsing_and_pins():
    assert S.java_major('openjdk version "17.0.15" 2025-04-15') == 17
    assert S.java_major('java version "1.8.0_352"') == 8
    assert S.java_major('openjdk version "21" 2023-09-19') == 21
    assert S.java_major("no version here") is None
    java, major = S.java_version()  # this machine (and CI's: .ci/setup-system.sh installs it) has Java 17+
    assert java and major and major >= S.MIN_JAVA
    import pyspark

    lock = (ROOT / "requirements.lock").read_text().splitlines()
    assert f"pyspark=={S.PYSPARK_VERSION}" in lock and pyspark.__version__ == S.PYSPARK_VERSION
    assert S.JAVA_PACKAGE in (ROOT / ".ci/setup-system.sh").read_text()


def test_session_settings():
    root = Path("/work/x/00000/spark")
    conf = S.session_conf({"spark_master": "local[2]", "spark_conf": {"spark.driver.memory": "2g",
                                                                      "spark.ui.enabled": True}}, root, "app")
    assert conf["spark.master"] == "local[2]" and conf["spark.driver.host"] == "127.0.0.1"
    assert conf["spark.driver.bindAddress"] == "127.0.0.1"
    assert f"-Djava.io.tmpdir={root / 'tmp'}" in conf["spark.driver.extraJavaOptions"]
    assert conf["spark.driver.memory"] == "2g" and conf["spark.ui.enabled"] == "true"  # user settings win
    cluster = S.session_conf({"spark_master": "spark://head:7077"}, root, "app")
    assert cluster["spark.master"] == "spark://head:7077" and "spark.driver.host" not in cluster
    assert "spark.executorEnv.TMPDIR" not in cluster
