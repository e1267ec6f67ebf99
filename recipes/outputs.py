"""What the recipes write and show: JSON, CSV and PNG files, and the progress of long runs.

- `json_safe(obj)`: numbers as strict JSON (NaN and inf become null, NumPy scalars Python numbers);
  `write_json(path, obj)` always goes through it, `print_json(obj)` prints it as one line.
- `write_csv(path, header, rows)`: a header and rows; a missing value (None) is an empty cell.
- `pyplot()` gives matplotlib's pyplot on the non-interactive Agg backend; `save_figure(fig, path)`.
- `progress(items, desc)`: a tqdm bar on a terminal; when stderr is not a terminal (a log file, a pipe)
  a few plain lines instead (at 0, 25, 50, 75 and 100 %). `fit_verbose()` is Keras' counterpart:
  1 (the bar) on a terminal, 2 (one line per epoch) otherwise.
"""

import csv
import json
import math
import os
import sys
import time

import numpy as np

PROGRESS_MARKS = (0.0, 0.25, 0.5, 0.75, 1.0)


def json_safe(obj):
    """NaN / inf -> None, NumPy scalars -> Python numbers, tuples -> lists, dict keys -> str, recursively."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def write_json(path, obj, indent=1):
    """Writes `json_safe(obj)` to `path` (parent directories created); returns the path."""
    _parent(path)
    with open(path, "w") as handle:
        json.dump(json_safe(obj), handle, indent=indent)
    return path


def print_json(obj):
    """Prints `json_safe(obj)` as one line on stdout (the recipes' `--json`: the last line of output)."""
    print(json.dumps(json_safe(obj)))


def write_csv(path, header, rows):
    """Writes a header and rows to `path`; NumPy numbers become Python numbers, None an empty cell."""
    _parent(path)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        for row in rows:
            if len(row) != len(header):
                raise ValueError(f"every CSV row needs {len(header)} cells ({', '.join(header)}); got {row!r}.")
            writer.writerow(["" if v is None else v.item() if isinstance(v, np.generic) else v for v in row])
    return path


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path, dpi=120):
    """Lays out, saves and closes `fig`; returns the path."""
    _parent(path)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path


def finite_or_nan(value):
    """`value` for plotting: NaN where it is None or not finite (a diverged run)."""
    return value if value is not None and math.isfinite(value) else float("nan")


def is_terminal(stream=None):
    stream = sys.stderr if stream is None else stream
    return hasattr(stream, "isatty") and stream.isatty()


def fit_verbose():
    """Keras `fit(verbose=...)`: 1 (progress bar) on a terminal, 2 (a line per epoch) otherwise."""
    return 1 if is_terminal() else 2


def progress(items, desc, enabled=True, total=None, stream=None):
    """Iterates over `items`, showing how far it got on stderr (nothing when `enabled` is False).

    A tqdm bar when `stream` (default stderr) is a terminal; otherwise one plain line at 0, 25, 50, 75
    and 100 % of `total` (default `len(items)`), e.g. `rho grid: 6/24 (25 %), 3.1 s`.
    """
    if not enabled:
        return iter(items)
    stream = sys.stderr if stream is None else stream
    total = len(items) if total is None else int(total)
    if is_terminal(stream):
        from tqdm import tqdm

        return iter(tqdm(items, desc=desc, total=total, file=stream))
    return _progress_lines(items, desc, total, stream)


def _progress_lines(items, desc, total, stream):
    marks = sorted({math.ceil(f * total) for f in PROGRESS_MARKS})
    start = time.perf_counter()

    def report(done):
        percent = 100 * done // total if total else 100
        print(f"{desc}: {done}/{total} ({percent} %), {time.perf_counter() - start:.1f} s", file=stream, flush=True)

    done = 0
    if marks[0] == 0:
        report(0)
    for item in items:
        yield item
        done += 1
        if done in marks:
            report(done)


def _parent(path):
    directory = os.path.dirname(os.fspath(path))
    if directory:
        os.makedirs(directory, exist_ok=True)
