"""recipes.outputs: strict JSON, CSV cells, figures, and a progress display that stays short when piped."""

import io
import json
import math

import numpy as np
import pytest

from recipes import outputs


def _strict_json(text):
    def reject(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=reject)


def test_json_is_strict_and_plain(tmp_path):
    value = {"a": float("nan"), "b": [np.float32(0.5), np.int64(3), (1, float("inf"))], 2: np.bool_(True)}
    path = outputs.write_json(tmp_path / "deep" / "x.json", value)
    assert _strict_json(open(path).read()) == {"a": None, "b": [0.5, 3, [1, None]], "2": True}


def test_csv_has_a_header_and_empty_cells_for_none(tmp_path):
    path = outputs.write_csv(tmp_path / "t.csv", ("a", "b"), [(1, None), (np.float64(0.25), "x"), (float("nan"), 2)])
    assert open(path).read().splitlines() == ["a,b", "1,", "0.25,x", "nan,2"]
    with pytest.raises(ValueError, match="every CSV row needs 2 cells"):
        outputs.write_csv(tmp_path / "bad.csv", ("a", "b"), [(1, 2, 3)])


def test_save_figure_writes_a_png(tmp_path):
    fig, ax = outputs.pyplot().subplots()
    ax.plot([0, 1], [outputs.finite_or_nan(1.0), outputs.finite_or_nan(None)])
    path = outputs.save_figure(fig, tmp_path / "f.png")
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert math.isnan(outputs.finite_or_nan(float("inf")))


def test_progress_when_piped_prints_a_few_plain_lines():
    stream = io.StringIO()
    items = list(outputs.progress(range(1000), "work", stream=stream))
    lines = stream.getvalue().splitlines()
    assert items == list(range(1000))
    assert len(lines) == 5 and "\r" not in stream.getvalue()
    assert [line.split(" (")[0] for line in lines] == [f"work: {k}/1000" for k in (0, 250, 500, 750, 1000)]
    stream = io.StringIO()
    assert list(outputs.progress(range(3), "few", stream=stream)) == [0, 1, 2]
    assert len(stream.getvalue().splitlines()) <= 5
    stream = io.StringIO()
    assert list(outputs.progress(range(3), "off", enabled=False, stream=stream)) == [0, 1, 2]
    assert stream.getvalue() == ""


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_on_a_terminal_is_a_tqdm_bar():
    stream = _Terminal()
    assert list(outputs.progress(range(50), "bar", stream=stream)) == list(range(50))
    assert "\r" in stream.getvalue() and "50/50" in stream.getvalue()
