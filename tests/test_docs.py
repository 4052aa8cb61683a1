"""The specification is in the repository: every citation of the paper in the code, tests, configs and notebooks
points into docs/paper.md, at an anchor or a section it has."""

import re
import subprocess

import pytest

from tests.conftest import REPO

PAPER = REPO / "docs" / "paper.md"
SECTIONS = re.compile(r"Sections? (\d+(?:\.\d+)?(?:(?:, | and )\d+(?:\.\d+)?)*)")


def cited_files() -> list:
    try:
        listed = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git clone")
    return [REPO / f for f in listed.split() if f.endswith((".py", ".yaml", ".ipynb", ".md"))
            and f != "tests/test_docs.py"]


def sections(text: str) -> set[str]:
    return {s for found in SECTIONS.findall(text) for s in re.split(r", | and ", found)}


def test_no_citation_points_outside_the_repository():
    outside = [f"{f.relative_to(REPO)}:{n}" for f in cited_files()
               for n, line in enumerate(f.read_text().splitlines(), 1) if "PAPER.md" in line]
    assert not outside, f"citations of PAPER.md, which is not in the repository (use docs/paper.md): {outside}"


def test_every_anchor_and_section_cited_is_in_docs_paper():
    text = PAPER.read_text()
    anchors = set(re.findall(r'<a id="([\w-]+)"></a>', text))
    documented = sections(text) | {h for h in re.findall(r"^## .*\((Section \d+(?:\.\d+)?)", text, re.M)}
    cited_anchors, cited_sections = {}, {}
    for f in cited_files():
        source = f.read_text()
        for anchor in re.findall(r"docs/paper\.md#([\w-]+)", source):
            cited_anchors.setdefault(anchor, f.relative_to(REPO))
        if f != PAPER:
            for section in sections(source):
                cited_sections.setdefault(section, f.relative_to(REPO))
    assert {"architecture", "ablations", "results", "qualitative", "cuda-convnet2"} <= anchors
    missing = {a: str(f) for a, f in cited_anchors.items() if a not in anchors}
    assert not missing, f"anchors cited but not in docs/paper.md: {missing}"
    missing = {s: str(f) for s, f in cited_sections.items() if s not in documented}
    assert not missing, f"paper sections cited but not covered by docs/paper.md: {missing}"


def test_every_link_in_the_docs_names_a_file_of_the_repository():
    broken = []
    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(REPO)} -> {target}")
    assert not broken, broken

