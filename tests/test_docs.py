"""Every section citation (the section sign followed by a number) in the code, tests, benchmarks, experiments and
README names a document in docs/ and a numbered section that exists there, written as
``docs/architecture.md`` + section sign + number; inside a document a bare sign + number cites its own section."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIGN = "\u00a7"
CITATION = re.compile(rf"(?:docs/(\w+)\.md )?{SIGN}(\d+)")
HEADING = re.compile(r"^## (\d+)\. ", re.M)
SCANNED = ("src", "tests", "benchmarks", "experiments", "csrc", "docs", "triton_kernels")
SUFFIXES = {".py", ".md", ".sh", ".h", ".cpp", ".cu", ".toml"}
SKIPPED = ("benchmarks/history/",)  # the dated log is kept as it was written


def sections() -> dict[str, set[str]]:
    """Document name -> the numbers of its ``## N. Title`` sections."""
    return {p.stem: set(HEADING.findall(p.read_text(encoding="utf-8"))) for p in (ROOT / "docs").glob("*.md")}


def unresolved(text: str, known: dict[str, set[str]], here: str | None = None) -> list[str]:
    """Each section sign in ``text`` that is not a citation of an existing section, as the words around it;
    ``here`` is the document ``text`` is (its bare citations are its own)."""
    bad = []
    cited = {m.start() + m.group(0).index(SIGN): m for m in CITATION.finditer(text)}
    for i, ch in enumerate(text):
        if ch != SIGN:
            continue
        m = cited.get(i)
        if m is None or m.group(2) not in known.get(m.group(1) or here, set()):
            bad.append(text[max(0, i - 40): i + 6].replace("\n", " "))
    return bad


def scanned_files():
    yield ROOT / "README.md"
    for top in SCANNED:
        for p in sorted((ROOT / top).rglob("*")):
            rel = p.relative_to(ROOT).as_posix()
            if p.is_file() and p.suffix in SUFFIXES and not rel.startswith(SKIPPED) and p != Path(__file__):
                yield p


def test_docs_have_numbered_sections():
    known = sections()
    assert {"architecture", "practices"} <= set(known)
    for name, numbers in known.items():
        assert numbers == {str(i) for i in range(1, len(numbers) + 1)}, f"docs/{name}.md: sections {numbers}"


def test_every_section_citation_resolves():
    known = sections()
    bad = {p.relative_to(ROOT).as_posix(): b for p in scanned_files()
           if (b := unresolved(p.read_text(encoding="utf-8", errors="replace"), known,
                               p.stem if p.parent == ROOT / "docs" else None))}
    assert bad == {}


def test_the_check_finds_planted_citations():
    known = {"architecture": {"1", "2"}}
    text = (f"ok docs/architecture.md {SIGN}2; missing docs/architecture.md {SIGN}9; "
            f"no document DESIGN {SIGN}2; unknown docs/style.md {SIGN}1; sign alone {SIGN}")
    assert len(unresolved(text, known)) == 4
    assert unresolved(f"docs/architecture.md {SIGN}1", known) == []
    assert unresolved(f"see {SIGN}2", known, here="architecture") == []  # inside the document itself
    assert len(unresolved(f"see {SIGN}3", known, here="architecture")) == 1


def test_the_code_cites_the_docs():
    """The citations this check guards exist (a check over nothing would pass vacuously)."""
    cited = [m for p in scanned_files() if p.parent != ROOT / "docs"
             for m in CITATION.finditer(p.read_text(encoding="utf-8", errors="replace")) if m.group(1)]
    assert len(cited) >= 3
