#!/usr/bin/env python3
"""``spark-submit``'s entry to the training job with the Spark backend.

spark-submit runs a ``.py`` file, not ``-m``: this one is ``python -m training train
--backend spark`` with the flags given after it, e.g. (from the repository, its venv
holding the ``spark`` extra)::

    PYSPARK_DRIVER_PYTHON=.venv/bin/python .venv/bin/spark-submit \\
        --master spark://spark-master:7077 --driver-memory 4g --executor-memory 4g \\
        deploy/spark_train.py --events events.parquet --items items.parquet

spark-submit's ``--master`` and other options decide where and how Spark runs
(``OMNIREC_SPARK_MASTER`` is not read then); every other setting is the environment's, as
for ``python -m training`` (``REDIS_URL``, ``MLFLOW_TRACKING_URI``,
``OMNIREC_IDENTITY_SECRET``, …). The job's own log lines come out on spark-submit's
stdout (it merges the driver's stderr into it).
"""

from __future__ import annotations

import sys
from pathlib import Path

# The training package, when this file is run from a checkout without installing it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.__main__ import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["train", "--backend", "spark", *sys.argv[1:]]))
