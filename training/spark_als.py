"""``train --backend spark``: implicit-feedback ALS fitted by Spark MLlib
(``pyspark.ml.recommendation.ALS(implicitPrefs=True)``) on a Spark cluster, handed back
as the same factor model the implicit backend makes, so validation, the holdout, the
bundle, the MLflow run and the publication are the very same code.

What runs where: events are loaded and the user × item weight matrix is built here, as
for the implicit backend (:func:`training.matrix.build_interactions`); only the
factorisation, the part that grows with the data times the iterations, runs on the
cluster. The matrix's row and column numbers are the int32 ids Spark's ALS needs (it
refuses ids beyond int32), so mapping back is indexing: row ``u`` of the matrix is user
``u`` of the bundle.

Why the results match the implicit backend's:

- **Confidence**: Spark's implicit ALS takes each rating ``r`` as preference 1 with
  confidence ``1 + alpha·r`` (Hu, Koren & Volinsky 2008), which is
  :func:`training.models.confidence`'s rule. So Spark gets the matrix's summed event
  weights and ``--alpha`` unchanged, and applies that same rule itself.
- **Regularisation**: implicit's ALS adds a fixed λ to every solve; Spark's adds
  ``regParam × n``, n being the person's (or item's) number of ratings ("ALS-WR", Zhou et
  al. 2008). :func:`reg_param` sets ``regParam = λ / (ratings per person)``, so a person
  with the typical history is regularised by the ``--regularization`` λ as in implicit,
  and serving's fold-in (which solves each person with the fixed λ the bundle records)
  sees factors trained at the same strength. On MovieLens 100K's time holdout (32
  factors, 15 iterations, λ 5) the model's own NDCG@10 was 0.1953 for implicit and
  0.1950 for Spark so mapped; λ itself as regParam over-regularises (0.041), λ over the
  ratings per item gave 0.1988. Served through ``Recommend``, Spark came within 1 % of
  implicit (``bench/bench_spark.py``).

Spark's fit is one call with no per-iteration callback, so progress is the number of
Spark jobs done (ALS with implicit preferences runs two per iteration), logged every
:data:`PROGRESS_SECONDS`; the training loss is logged once, after the fit, computed by
implicit's own loss function on Spark's factors so it compares with the implicit
backend's last ``train_loss``.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from service.errors import OmnirecError
from training.models import IterationHook, ModelParams, confidence

log = logging.getLogger(__name__)
# py4j logs every connection it opens and closes at INFO.
logging.getLogger("py4j").setLevel(logging.WARNING)

#: The oldest Java PySpark 4 runs on.
MIN_JAVA = 17
#: Seconds between progress lines while Spark fits.
PROGRESS_SECONDS = 10.0
#: How long a ``spark://`` master gets to accept a connection before training gives up.
CONNECT_SECONDS = 3.0
#: The Spark job groups of fits (numbered), to count their jobs for the progress lines.
JOB_GROUP = "omnirec-als"

HOW_TO_GET_JAVA = (
    "install a JRE 17+ (Debian: scripts/ensure-java installs openjdk-17-jre-headless as root)"
)
HOW_TO_GET_PYSPARK = "pip install -e '.[spark]' (scripts/ensure-spark does it with Java)"

# Spark's own log lines: its INFO and WARN lines (several screens per fit) would bury the
# job's progress, and its ERROR lines carry Java stack traces where the job's error line
# (the exception's first line) says what went wrong; so only FATAL ones, unless
# OMNIREC_LOG_LEVEL=DEBUG (then WARN and above). Used when this process starts Spark;
# under spark-submit the cluster's own log4j2 settings stay in force.
_LOG4J2 = """\
rootLogger.level = {level}
rootLogger.appenderRef.console.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = spark %p %c{{1}}: %m%n
# Spark gives the JVM pyspark starts a WARN threshold of its own, and says so in two
# lines, unless the logger of that JVM's entry point is configured.
logger.gateway.name = org.apache.spark.api.python.PythonGatewayServer
logger.gateway.level = {level}
"""


class SparkUnavailable(OmnirecError):
    """Spark cannot run here (no pyspark, no Java 17+, no master answering) or its fit
    failed; the message says why in one line."""


_lock = threading.Lock()
_fits = itertools.count(1)
_session: Any = None
_master: str | None = None


def session(master: str | None = None) -> Any:
    """The Spark session fits run on, started at first use.

    ``master`` (``OMNIREC_SPARK_MASTER``; None: the one running, else the setting from the
    environment) decides where; a different one than the running session's restarts it.
    Under spark-submit, its ``--master`` decides instead. Raises
    :class:`SparkUnavailable` with one line when pyspark or Java 17+ is missing or the
    master does not answer.
    """
    global _session, _master
    with _lock:
        if master is None:
            if _session is not None:
                return _session
            from service.config import load_settings

            master = load_settings().spark_master
        if _session is not None and master == _master:
            return _session
        # Checked before a running session is stopped: a master that does not answer
        # leaves the running one as it was.
        if not submitted():
            check_master(master)
        if _session is not None:
            log.info("stopping Spark (master %s) to start it on %s", _master, master)
            stop()
        _session = _start(master)
        _master = master
        return _session


def stop() -> None:
    """Stop the Spark session, if one is running (it also stops when the process exits)."""
    global _session, _master
    if _session is not None:
        _session.stop()
    _session, _master = None, None


def find_java() -> tuple[Path, int]:
    """The ``java`` Spark will launch (``$JAVA_HOME/bin/java`` when JAVA_HOME is set, else
    the one on PATH, as Spark's launcher picks it) and its major version; raises
    :class:`SparkUnavailable` when there is none of at least :data:`MIN_JAVA`."""
    home = os.environ.get("JAVA_HOME")
    if home:
        java = Path(home) / "bin" / "java"
        if not os.access(java, os.X_OK):
            raise SparkUnavailable(
                f"the spark backend needs Java {MIN_JAVA}+: JAVA_HOME={home} has no bin/java; "
                f"set JAVA_HOME to a JRE {MIN_JAVA}+ or unset it"
            )
    else:
        found = shutil.which("java")
        if found is None:
            raise SparkUnavailable(
                f"the spark backend needs Java {MIN_JAVA}+ and there is no java on PATH: "
                + HOW_TO_GET_JAVA
            )
        java = Path(found)
    major = java_major(java)
    if major < MIN_JAVA:
        raise SparkUnavailable(
            f"the spark backend needs Java {MIN_JAVA}+, {java} is Java {major or '?'}: "
            + HOW_TO_GET_JAVA
        )
    return java, major


def java_major(java: Path) -> int:
    """``java -version``'s major version (``17.0.15`` → 17, ``1.8.0_292`` → 8; 0 when it
    says none)."""
    try:
        out = subprocess.run(
            [str(java), "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return 0
    found = re.search(r'version "(?:1\.)?(\d+)', out.stderr + out.stdout)
    return int(found.group(1)) if found else 0


def check_master(master: str) -> None:
    """Fail in seconds, with one line, when no ``spark://`` master of ``master`` accepts a
    connection; Spark itself retries for a minute and then fails in many lines. Other
    masters (``local``, ``yarn``, ``k8s://``) are left to Spark."""
    if not master.startswith("spark://"):
        return
    reasons = []
    for address in master.removeprefix("spark://").split(","):
        host, _, port = address.rpartition(":")
        try:
            with socket.create_connection((host, int(port)), timeout=CONNECT_SECONDS):
                return
        except (OSError, ValueError) as exc:
            reasons.append(f"{address}: {getattr(exc, 'strerror', None) or exc}")
    raise SparkUnavailable(
        f"OMNIREC_SPARK_MASTER={master}: no Spark master answers ({'; '.join(reasons)})"
    )


def submitted() -> bool:
    """Whether spark-submit runs this process: its JVM is running already, with the
    master and the options it was given, and the environment says where to find it."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def _start(master: str) -> Any:
    # Under spark-submit the JVM runs already; otherwise pyspark launches one, with the
    # Java found here.
    launched_here = not submitted()
    if launched_here:
        find_java()
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise SparkUnavailable(
            f"the spark backend needs pyspark, which is not installed: {HOW_TO_GET_PYSPARK}"
        ) from None
    started = time.perf_counter()
    log.info("starting Spark (master %s)", master if launched_here else "from spark-submit")
    builder = (
        SparkSession.builder.appName("omnirec-train")
        # Ratings go to Spark and factors come back as Arrow batches, not row by row.
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.ui.showConsoleProgress", "false")
    )
    # Its log settings and (local masters) its checkpoints; gone when the process ends.
    scratch = Path(tempfile.mkdtemp(prefix="omnirec-spark-"))
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    if launched_here:
        builder = builder.master(master)
        config = scratch / "log4j2.properties"
        debug = logging.getLogger().getEffectiveLevel() <= logging.DEBUG
        config.write_text(_LOG4J2.format(level="warn" if debug else "fatal"))
        builder = builder.config(
            "spark.driver.extraJavaOptions", f"-Dlog4j2.configurationFile=file:{config}"
        )
    if launched_here and master.startswith("local"):
        # One machine needs no network: skip the look-up of a routable address (and its
        # warning on hosts whose name resolves to loopback).
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    try:
        with _quiet_pandas_warnings():
            spark = builder.getOrCreate()
    except Exception as exc:  # py4j and pyspark raise many kinds
        raise SparkUnavailable(
            f"Spark did not start (OMNIREC_SPARK_MASTER={master}): {_first_line(exc)}"
        ) from None
    context = spark.sparkContext
    if context.master.startswith("local") and context.getCheckpointDir() is None:
        # Long lineages overflow the JVM's stack past a few dozen iterations unless ALS
        # can checkpoint; a local folder serves one machine (a cluster needs shared
        # storage, which its operator sets with spark.checkpoint.dir).
        context.setCheckpointDir(str(scratch / "checkpoints"))
    log.info(
        "Spark %s started in %.1f s: master %s, %d cores",
        spark.version,
        time.perf_counter() - started,
        context.master,
        context.defaultParallelism,
    )
    return spark


def reg_param(matrix: sp.csr_matrix, regularization: float) -> float:
    """Spark's ``regParam`` for implicit's λ: λ over the mean number of items per person
    who has any, so that person's solve is regularised by λ in both (see the module
    docstring)."""
    people = int(np.count_nonzero(np.diff(matrix.indptr)))
    return regularization * people / matrix.nnz if matrix.nnz else regularization


def fit(
    params: ModelParams, matrix: sp.csr_matrix, on_iteration: IterationHook | None = None
) -> Any:
    """Fit ALS on Spark from ``matrix`` (users × items, summed event weights); returns an
    implicit ``AlternatingLeastSquares`` holding Spark's factors (so ``recommend`` and
    :func:`training.models.to_bundle` work as for the implicit backend). People and items
    without any rating get zero factors, as implicit gives them."""
    from implicit.cpu.als import AlternatingLeastSquares, calculate_loss
    from pyspark.ml.recommendation import ALS

    params.validate()
    spark = session()
    context = spark.sparkContext
    matrix = matrix.tocsr()
    coo = matrix.tocoo()
    ratings = pd.DataFrame(
        {
            "user": coo.row.astype(np.int32),
            "item": coo.col.astype(np.int32),
            "weight": coo.data.astype(np.float32),
        }
    )
    regularization = float(params.regularization)
    spark_reg = reg_param(matrix, regularization)
    blocks = max(context.defaultParallelism, 1)
    log.info(
        "fitting als on Spark: %d users × %d items (%d interactions), %d factors, "
        "%d iterations, regParam %.5g (λ %g), alpha %g, %d blocks",
        matrix.shape[0],
        matrix.shape[1],
        matrix.nnz,
        params.factors,
        params.iterations,
        spark_reg,
        regularization,
        params.alpha,
        blocks,
    )
    als = ALS(
        rank=params.factors,
        maxIter=params.iterations,
        regParam=spark_reg,
        alpha=params.alpha,
        implicitPrefs=True,
        userCol="user",
        itemCol="item",
        ratingCol="weight",
        numUserBlocks=blocks,
        numItemBlocks=blocks,
        seed=params.seed,
    )
    started = time.perf_counter()
    with _quiet_pandas_warnings():
        frame = spark.createDataFrame(ratings)
        # A group of its own per fit, so the progress lines count this fit's jobs only.
        group = f"{JOB_GROUP}-{next(_fits)}"
        context.setJobGroup(group, "omnirec ALS fit")
        try:
            with _progress(context, group, params.iterations, started):
                model = als.fit(frame)
                users = _factors(model.userFactors, matrix.shape[0], params.factors)
                items = _factors(model.itemFactors, matrix.shape[1], params.factors)
        except Exception as exc:  # py4j and pyspark raise many kinds
            raise SparkUnavailable(f"Spark's ALS fit failed: {_first_line(exc)}") from None
    # The factors are cached on the cluster until the model goes; free them now.
    model.userFactors.unpersist()
    model.itemFactors.unpersist()
    elapsed = time.perf_counter() - started
    with threadpool_limits(1, "blas"):
        # implicit warns about a multi-threaded BLAS when it is built; it never fits here.
        out = AlternatingLeastSquares(
            factors=params.factors,
            regularization=regularization,
            alpha=1.0,
            iterations=params.iterations,
            random_state=params.seed,
        )
    out.user_factors, out.item_factors = users, items
    loss = float(calculate_loss(confidence(matrix, params), users, items, regularization))
    log.info("fitted als on Spark in %.1f s, train_loss %.5f", elapsed, loss)
    if on_iteration is not None:
        on_iteration(params.iterations - 1, elapsed, "train_loss", loss)
    return out


def _factors(frame: Any, rows: int, factors: int) -> np.ndarray:
    """A Spark factor DataFrame (``id``, ``features``) as a rows × factors float32 array
    in id order; ids Spark never saw stay zero."""
    pdf = frame.toPandas()
    out = np.zeros((rows, factors), dtype=np.float32)
    if len(pdf):
        out[pdf["id"].to_numpy(dtype=np.int64)] = np.stack(pdf["features"].to_numpy())
    return out


@contextmanager
def _progress(context: Any, group: str, iterations: int, started: float) -> Iterator[None]:
    """Log how far the fit is every :data:`PROGRESS_SECONDS` while the block runs."""
    done = threading.Event()
    tracker = context.statusTracker()

    def report() -> None:
        while not done.wait(PROGRESS_SECONDS):
            try:
                jobs = [tracker.getJobInfo(j) for j in tracker.getJobIdsForGroup(group)]
            except Exception:  # the context may be stopping: stay quiet
                return
            finished = sum(1 for job in jobs if job is not None and job.status == "SUCCEEDED")
            log.info(
                "als on Spark: %.0f s, %d Spark jobs done (about 2 per iteration, %d iterations)",
                time.perf_counter() - started,
                finished,
                iterations,
            )

    watcher = threading.Thread(target=report, name="spark-progress", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()


@contextmanager
def _quiet_pandas_warnings() -> Iterator[None]:
    # pyspark 4 warns on every pandas conversion that it does not vouch for pandas 3, and
    # calls an astype that pandas 3 deprecates; the conversions used here (numbers and
    # float arrays) are covered by the tests.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas")
        warnings.filterwarnings("ignore", message="The copy keyword is deprecated")
        yield


def _first_line(exc: BaseException) -> str:
    """The first meaningful line of a (often many-line, Java) error: py4j's own errors
    start with a line naming the JVM object called, then ``: java.…Exception: why``."""
    for line in str(exc).splitlines():
        line = line.strip().removeprefix(": ")
        if line and not line.startswith("An error occurred while calling"):
            return line[:300]
    return type(exc).__name__
