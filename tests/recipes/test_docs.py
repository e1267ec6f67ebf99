"""The documentation: every relative link resolves, and the runnable snippets run as written."""

import glob
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PAGES = ["README.md"] + sorted(os.path.relpath(p, ROOT) for p in glob.glob(f"{ROOT}/docs/**/*.md", recursive=True))
LINK = re.compile(r"\]\(([^)\s#]*)(#[^)\s]*)?\)")
SNIPPET = re.compile(r"```(bash|python) snippet\n(.*?)```", re.S)
# what each page's snippets must print or write, besides exiting with status 0
EXPECTED = {
    "README.md": ("'sharpness':", "'grad_cosine':", "trained.keras", "MobileNetV2:"),
    "docs/recipes/resnet.md": ("m-sharpness of the ERM -> SAM model:", "train loss along the segment:",
                               "interpolation.png", "runs/smoke_erm_to_sam/results.json"),
    "docs/tools.md": ("'method':", "'objective':", "tune/mlp/oracle.json"),
}


def _text(page):
    with open(os.path.join(ROOT, page)) as handle:
        return handle.read()


def _anchor(heading):
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as dashes."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_relative_links_and_anchors_resolve():
    broken = []
    for page in PAGES:
        for target, anchor in LINK.findall(_text(page)):
            if target.startswith(("http://", "https://")):
                continue
            path = os.path.normpath(os.path.join(os.path.dirname(page), target)) if target else page
            if not os.path.exists(os.path.join(ROOT, path)):
                broken.append(f"{page}: {target}")
            elif anchor and path.endswith(".md"):
                headings = {_anchor(h) for h in re.findall(r"^#+ (.*)$", _text(path), re.M)}
                if anchor[1:] not in headings:
                    broken.append(f"{page}: {target}{anchor}")
    assert not broken, broken


def test_every_page_with_snippets_is_checked():
    assert {page for page in PAGES if SNIPPET.search(_text(page))} == set(EXPECTED)


@pytest.mark.slow
@pytest.mark.parametrize("page", sorted(EXPECTED))
def test_snippets_run_as_written(page, tmp_path):
    environment = {**os.environ, "PYTHONPATH": ROOT}
    printed = []
    for language, code in SNIPPET.findall(_text(page)):
        if language == "bash":
            command = ["bash", "-ec", code.replace("msam ", f"{sys.executable} -m recipes ")]
        else:
            command = [sys.executable, "-c", code]
        done = subprocess.run(command, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        printed.append(done.stdout)
    for expected in EXPECTED[page]:
        assert expected in "".join(printed) or (tmp_path / expected).exists(), expected
