"""``python bench/real_logs NAME``: convert one public log (see the package docstring)."""

import sys
from pathlib import Path

# Run as a folder, this file's own folder comes first on the path; the package's parent
# must, so that ``real_logs`` imports as the package it is.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from real_logs import main  # noqa: E402

sys.exit(main())
