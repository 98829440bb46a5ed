"""The docs stay self-contained and their references resolve: every `docs/method.md §n` citation in the
code and the docs names a section that docs/method.md has, nothing points to a specification or design
document outside the repository, and docs/architecture.md names every key that may change on resume."""
from __future__ import annotations

import os
import re
from pathlib import Path

from trainer.config import RESUMABLE_KEYS

ROOT = Path(__file__).resolve().parents[1]
METHOD = ROOT / "docs" / "method.md"
SKIP_DIRS = {".git", ".venv", "__pycache__", ".pytest_cache", "runs", "mlruns", "outputs", "build", "dist"}
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".json", ".toml", ".txt", ".sh", ".cfg"}

# A citation: "docs/method.md" (or a link to method.md), then the section numbers that follow it up to the
# end of the sentence or the next file name: "docs/method.md §3, §5–§7", "[method.md](method.md) §8 (pretraining)
# and §9 (finetuning)".
CITED_FILE = re.compile(r"method\.md")
CITATION_END = re.compile(r"\.(?:\s|$)|\.md\b")
SECTION_NUMBER = re.compile(r"§(\d+(?:\.\d+)?)")
LINK_TARGET = re.compile(r"\]\([^)\s]*\)")
# a citation in words instead of §n (the file name, then "section" and a number) would escape the check above
WORDED_CITATION = re.compile(r"method\.md(?:\]\([^)\s]*\))?\)?,?\s+sections?\s+\d")
# documents that live outside the repository: a reader of the code or the docs cannot open them
OUTSIDE_REFERENCES = (
    re.compile(r"\b(?:SPEC|DESIGN)\.md\b"),
    re.compile(r"\bSPEC\s*(?:section|§|\d)"),
    re.compile(r"\bDESIGN\b"),
)


def repository_text_files() -> list[Path]:
    """Source, docs and config files of the checkout (virtual environments, caches and run folders left out)."""
    files = []
    for folder, dirs, names in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info")]
        files += [Path(folder) / n for n in names if Path(n).suffix in TEXT_SUFFIXES or n == "Makefile"]
    return sorted(files)


def method_sections() -> set[str]:
    """Section numbers of docs/method.md: '## 7. …' gives '7', '### 7.2 …' gives '7.2'."""
    text = METHOD.read_text(encoding="utf-8")
    return set(re.findall(r"^##+ (\d+(?:\.\d+)?)\.? ", text, flags=re.MULTILINE))


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_method_has_its_numbered_sections() -> None:
    sections = method_sections()
    assert {str(n) for n in range(1, 15)} <= sections, sorted(sections)
    assert {"7.1", "7.2", "7.3", "8.4", "9.1", "9.2", "11.2"} <= sections


def cited_sections(text: str) -> list[str]:
    """The docs/method.md section numbers a text cites (see CITED_FILE)."""
    numbers = []
    for match in CITED_FILE.finditer(text):
        link = LINK_TARGET.match(text, match.end())  # "[method.md](method.md) §8": the numbers follow the link
        start = link.end() if link else match.end()
        rest = text[start : start + 300]
        end = CITATION_END.search(rest)
        numbers += SECTION_NUMBER.findall(rest if end is None else rest[: end.start()])
    return numbers


def test_every_method_citation_names_an_existing_section() -> None:
    sections = method_sections()
    cited: dict[str, set[str]] = {}
    bad = []
    for path in repository_text_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        where = path.relative_to(ROOT).as_posix()
        # docs/method.md refers to its own sections by § alone
        numbers = SECTION_NUMBER.findall(text) if path == METHOD else cited_sections(text)
        for number in numbers:
            cited.setdefault(where, set()).add(number)
            if number not in sections:
                bad.append(f"{where}: cites docs/method.md §{number}, which docs/method.md does not have")
        bad += [f"{where}: cites docs/method.md in words ({m.group(0)!r}); write §n" for m in WORDED_CITATION.finditer(text)]
    assert not bad, "\n".join(bad)
    # the check has something to check: the library and the recipes cite the method by section
    for source in ("cllm4rec/model.py", "cllm4rec/losses.py", "cllm4rec/metrics.py", "cllm4rec/tokenization.py",
                   "trainer/pipeline.py", "trainer/data.py", "trainer/config.py", "docs/configuration.md"):
        assert cited.get(source), f"{source} cites no section of docs/method.md"


def test_method_anchor_links_resolve() -> None:
    text = METHOD.read_text(encoding="utf-8")
    anchors = {github_anchor(h) for h in re.findall(r"^#+ (.+)$", text, flags=re.MULTILINE)}
    links = re.findall(r"\]\(#([^)]+)\)", text)
    assert links, "docs/method.md links none of its own sections"
    assert set(links) <= anchors, sorted(set(links) - anchors)


def test_nothing_points_outside_the_repository() -> None:
    me = Path(__file__).resolve()
    found = []
    for path in repository_text_files():
        if path.resolve() == me:  # the patterns above spell the names out
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if any(pattern.search(line) for pattern in OUTSIDE_REFERENCES):
                found.append(f"{path.relative_to(ROOT).as_posix()}:{number}: {line.strip()[:120]}")
    assert not found, "references to documents outside the repository:\n" + "\n".join(found)


def test_method_doc_is_linked_from_the_readme_and_the_architecture() -> None:
    assert "(docs/method.md)" in (ROOT / "README.md").read_text(encoding="utf-8")
    assert "(method.md)" in (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")


def test_architecture_names_every_key_that_may_change_on_resume() -> None:
    """The checkpoint identity of docs/architecture.md (section 5) lists the keys of RESUMABLE_KEYS."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    start, end = text.find("The identity is:"), text.find("Any difference is an error")
    assert 0 <= start < end, "docs/architecture.md: no identity list ('The identity is:' … 'Any difference is an error')"
    missing = [key for key in RESUMABLE_KEYS if f"`{key}`" not in text[start:end]]
    assert not missing, f"docs/architecture.md's identity list (section 5) does not name {missing}"
