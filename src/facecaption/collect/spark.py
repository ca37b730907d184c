"""The Spark session behind ``urls.distributor: pyspark`` (img2dataset's Spark distributor).

img2dataset's ``pyspark_distributor`` reuses the SparkSession active in the calling thread and otherwise starts
``local[processes]`` with 16 GB of driver memory, Spark's console logging and scratch folders in /tmp, and stops
it at the end. :func:`spark_session` starts that session first, on our terms, so img2dataset reuses it:

* master ``urls.spark_master`` (``local[2]`` by default; ``spark://host:7077``, ``yarn``, ``k8s://...`` on a
  cluster) and the extra settings ``urls.spark_conf`` (they win over ours);
* quiet: Spark's log4j (WARN; SparkContext's version, job and stop lines at INFO) and everything else the JVM
  and its Python workers print go to the job's log: our stderr when it is a file (Snakemake's
  ``2> logs/collect/<shard>.log``), else ``<work_dir>/<shard>.spark.log``; never to the terminal, and no
  console progress bar;
* working folders under the job's cache folder ``<work_dir>/<shard>/spark/``: the JVM's ``java.io.tmpdir``,
  and for a local master Spark's local dirs (``SPARK_LOCAL_DIRS``), the SQL warehouse and the Python workers'
  ``TMPDIR``;
* a local master binds to 127.0.0.1 only (no web UI, no port on another interface) and runs its Python
  workers with this interpreter;
* stopped when the job ends: the session, then the JVM it was started in (so a later session in the same
  process starts afresh with its own settings);
* a missing Java (or one older than 17) or pyspark stops the job with one line (a ``SourceError``).

A session already active in the process (a user's, e.g. in a notebook attached to a cluster) is reused as it is
and left running.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from facecaption.core.config import SourceError

log = logging.getLogger(__name__)

#: the pyspark pinned in pyproject.toml / requirements.lock (named in the error when it is missing)
PYSPARK_VERSION = "4.3.0"
#: the oldest Java that Spark 4 runs on
MIN_JAVA = 17
JAVA_PACKAGE = "openjdk-17-jre-headless"
DEFAULT_MASTER = "local[2]"

_LOG4J = """\
# written by facecaption.collect.spark: Spark's log at WARN (SparkContext's few lines at INFO: version, jobs,
# stop), to the JVM's stderr (the job's log)
status = error
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{yyyy-MM-dd HH:mm:ss} %p spark %c{1}: %m%n%ex
rootLogger.level = warn
rootLogger.appenderRef.stdout.ref = console
logger.context.name = org.apache.spark.SparkContext
logger.context.level = info
# "Unable to load native-hadoop library": expected, not worth a line per job
logger.nativeio.name = org.apache.hadoop.util.NativeCodeLoader
logger.nativeio.level = error
"""


def java_command() -> str | None:
    """The java that Spark's launch scripts run: ``$JAVA_HOME/bin/java``, else ``java`` on PATH."""
    home = os.environ.get("JAVA_HOME")
    if home:
        path = Path(home) / "bin" / "java"
        return str(path) if path.is_file() and os.access(path, os.X_OK) else None
    return shutil.which("java")


def java_major(version_text: str) -> int | None:
    """The major version in ``java -version`` output (``"17.0.15"`` -> 17, ``"1.8.0_352"`` -> 8)."""
    m = re.search(r'version "(\d+)(?:\.(\d+))?', version_text)
    if not m:
        return None
    major = int(m.group(1))
    return int(m.group(2) or 0) if major == 1 else major


def java_version() -> tuple[str | None, int | None]:
    """(java command, its major version); (None, None) when there is none, (cmd, None) when it does not run."""
    java = java_command()
    if java is None:
        return None, None
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return java, None
    return java, java_major(out.stderr + out.stdout)


def require() -> None:
    """Stop with one line (``SourceError``) unless pyspark and a Java that Spark runs on are installed."""
    try:
        import pyspark  # noqa: F401, PLC0415
    except ImportError:
        raise SourceError(f"config error: urls.distributor: pyspark needs the pyspark package "
                          f"(pip install pyspark=={PYSPARK_VERSION})") from None
    java, major = java_version()
    if major is None or major < MIN_JAVA:
        found = ("no java (JAVA_HOME unset and none on PATH)" if java is None and not os.environ.get("JAVA_HOME")
                 else f"no java at JAVA_HOME={os.environ['JAVA_HOME']}" if java is None
                 else f"{java} does not run" if major is None else f"{java} is Java {major}")
        raise SourceError(f"config error: urls.distributor: pyspark needs Java {MIN_JAVA}+ "
                          f"(apt-get install {JAVA_PACKAGE}, or set JAVA_HOME); found {found}")


def is_local(master: str) -> bool:
    """Whether ``master`` runs everything on this machine (``local``, ``local[N]``, ``local-cluster[...]``)."""
    return master.strip().lower().startswith("local")


def _java_opt(name: str, value: str) -> str:
    opt = f"-D{name}={value}"
    return f'"{opt}"' if any(ch.isspace() for ch in opt) else opt


def session_conf(ucfg: dict, root: Path, app_name: str) -> dict[str, str]:
    """The Spark settings of the session started for one collect job (``root``: its working folder)."""
    master = str(ucfg.get("spark_master") or DEFAULT_MASTER)
    conf = {
        "spark.master": master,
        "spark.app.name": app_name,
        "spark.ui.showConsoleProgress": "false",
        "spark.driver.extraJavaOptions": " ".join([
            _java_opt("log4j2.configurationFile", (root / "log4j2.properties").as_uri()),
            _java_opt("java.io.tmpdir", str(root / "tmp"))]),
    }
    if is_local(master):
        conf.update({  # (scratch: SPARK_LOCAL_DIRS, set while the JVM starts; spark.local.dir would warn)
            "spark.sql.warehouse.dir": (root / "warehouse").as_uri(),
            "spark.driver.host": "127.0.0.1",
            "spark.driver.bindAddress": "127.0.0.1",
            "spark.ui.enabled": "false",
            "spark.executorEnv.TMPDIR": str(root / "tmp"),
        })
    for key, value in (ucfg.get("spark_conf") or {}).items():
        conf[str(key)] = str(value).lower() if isinstance(value, bool) else str(value)
    return conf


@contextmanager
def _env(updates: dict[str, str]) -> Iterator[None]:
    """``os.environ`` with ``updates`` while the JVM is launched (it and its Python workers inherit it)."""
    tempfile.gettempdir()  # fix this process's own temp dir first: a TMPDIR set here must not become it
    saved = {k: os.environ.get(k) for k in updates}
    os.environ.update(updates)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _stderr_is_file() -> bool:
    try:
        return stat.S_ISREG(os.fstat(2).st_mode)
    except OSError:
        return False


def _stop_gateway(gateway) -> None:
    """Shut the py4j gateway and end its JVM (it exits when its stdin closes; killed if it does not)."""
    from pyspark import SparkContext  # noqa: PLC0415

    try:
        gateway.shutdown()
    except Exception as exc:  # noqa: BLE001 (a JVM that already died)
        log.debug("spark: gateway shutdown: %s", exc)
    with SparkContext._lock:
        if SparkContext._gateway is gateway:
            SparkContext._gateway = None
            SparkContext._jvm = None
    proc = getattr(gateway, "proc", None)
    if proc is None:
        return
    try:
        if proc.stdin is not None:
            proc.stdin.close()
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        log.warning("spark: the JVM (pid %d) did not exit, killing it", proc.pid)
        proc.kill()
        proc.wait()
    except OSError:
        pass


@contextmanager
def spark_session(ucfg: dict, work: Path) -> Iterator:
    """The SparkSession for the collect job whose cache folder is ``work`` (``<work_dir>/<shard>``).

    Reuses the session active in this thread; otherwise starts one (see the module doc), yields it, and stops
    it and its JVM on the way out, whatever happened inside.
    """
    require()
    if logging.getLogger("py4j").level == logging.NOTSET:  # py4j says "Closing down clientserver connection"
        logging.getLogger("py4j").setLevel(logging.WARNING)
    from pyspark import SparkConf, SparkContext  # noqa: PLC0415
    from pyspark.java_gateway import launch_gateway  # noqa: PLC0415
    from pyspark.sql import SparkSession  # noqa: PLC0415

    active = SparkSession.getActiveSession()
    if active is not None:
        log.info("spark: reusing the active session (master %s)", active.sparkContext.master)
        yield active
        return

    work = Path(work).resolve()
    root = work / "spark"
    for sub in ("tmp", "local"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "log4j2.properties").write_text(_LOG4J)
    conf_map = session_conf(ucfg, root, f"facecaption-collect-{work.name}")
    master = conf_map["spark.master"]
    conf = SparkConf(loadDefaults=False).setAll(list(conf_map.items()))

    env = {}
    if is_local(master):
        env = {"SPARK_LOCAL_IP": "127.0.0.1", "SPARK_LOCAL_DIRS": str(root / "local"), "TMPDIR": str(root / "tmp")}
        if not os.environ.get("PYSPARK_PYTHON"):
            env["PYSPARK_PYTHON"] = sys.executable  # the workers import facecaption and img2dataset
    if _stderr_is_file():
        log_file, where = None, "the job's log"
    else:
        log_path = work.with_name(f"{work.name}.spark.log")
        log_file, where = open(log_path, "ab"), str(log_path)  # noqa: SIM115 (closed in finally)
    out = log_file.fileno() if log_file is not None else 2

    t0 = time.perf_counter()
    gateway = None
    spark = None
    try:
        with _env(env):
            if SparkContext._gateway is None:  # else a JVM left by earlier code in this process is used
                try:
                    gateway = launch_gateway(conf, popen_kwargs={"stdout": out, "stderr": out})
                except Exception as exc:  # noqa: BLE001 (PySparkRuntimeError JAVA_GATEWAY_EXITED, OSError)
                    raise RuntimeError(f"spark: the JVM did not start ({exc}); its output is in {where}") from None
            SparkContext(conf=conf, gateway=gateway)
            spark = SparkSession.builder.getOrCreate()
        log.info("spark: %s session started in %.1f s (Spark %s; log in %s, scratch in %s)", master,
                 time.perf_counter() - t0, spark.version, where, root)
        yield spark
    finally:
        if spark is not None:
            try:
                spark.stop()
            except Exception as exc:  # noqa: BLE001 (a JVM that died: still end it below)
                log.warning("spark: stopping the session: %s", exc)
        elif SparkContext._active_spark_context is not None and gateway is not None:
            SparkContext._active_spark_context.stop()
        if gateway is not None:
            _stop_gateway(gateway)
        if log_file is not None:
            log_file.close()
        log.info("spark: %s session stopped", master)
