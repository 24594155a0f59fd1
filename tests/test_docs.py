"""The repository documents itself: every reference in code, configs and Markdown points at a file
inside the repository (docs/), and every citation into docs/ resolves (seed papers, spec sections
and lines, design sections, ``file:function`` references)."""

from __future__ import annotations

import ast
import re
from functools import lru_cache
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
TEXT_SUFFIXES = (".py", ".yaml", ".md", ".toml")
#: Files that may keep a reference outside the repository because they could not be edited when
#: the docs were written. Keep it empty.
ALLOWED_OUTSIDE: set[str] = set()


#: The repository's own folders (the design card's top level); work directories and virtual
#: environments sit beside them and are not walked.
SOURCE_DIRS = ("attacks", "bench", "defenses", "docs", "examples", "results", "tests")


@lru_cache(maxsize=1)
def tracked_text_files() -> tuple[str, ...]:
    """The repository's *.py, *.yaml, *.md and *.toml files: the top-level ones and those under
    its own folders (found on disk, so a copy without .git is checked the same)."""
    found = [p for p in ROOT.iterdir() if p.is_file()]
    found += [p for folder in SOURCE_DIRS for p in (ROOT / folder).rglob("*") if p.is_file()]
    names = (p.relative_to(ROOT).as_posix() for p in found)
    return tuple(sorted(n for n in names if n.endswith(TEXT_SUFFIXES) and "__pycache__" not in n))


def read(name: str) -> str:
    return (ROOT / name).read_text(encoding="utf-8")


def spec_sections() -> dict[int, str]:
    """Line number (1-based) of docs/defense-specs.md -> the section it lies in ("6.4", "9", "A")."""
    section, sections = None, {}
    for number, line in enumerate(read("docs/defense-specs.md").splitlines(), 1):
        heading = re.match(r"#{2,3} (\d+(?:\.\d+)?)[. ]", line)
        if heading:
            section = heading.group(1)
        elif line.startswith("## Appendix A"):
            section = "A"
        elif line.startswith("## About this file"):
            section = None
        sections[number] = section
    return sections


def in_section(found: str | None, cited: str) -> bool:
    return found is not None and (found == cited or found.startswith(cited + "."))


# -- no reference outside the repository ---------------------------------------------------------

# Built from pieces so that this file does not match itself.
OUTSIDE = re.compile("|".join([re.escape("../" + "shared"), re.escape("/work/" + "shared"),
                               re.escape("shared/" + "seeds"), re.escape("DEFENSE_" + "SPECS.md"),
                               r"(?<![\w/])" + re.escape("DESIGN" + ".md")]))


def test_no_tracked_file_refers_to_documents_outside_the_repository():
    offenders = [f"{name}:{number}: {line.strip()}"
                 for name in tracked_text_files() if name not in ALLOWED_OUTSIDE
                 for number, line in enumerate(read(name).splitlines(), 1) if OUTSIDE.search(line)]
    assert not offenders, "references outside the repository:\n" + "\n".join(offenders)


def test_the_outside_reference_pattern_catches_what_it_must():
    for text in ("see ../" + "shared/DESIGN.md", "copied from /work/" + "shared/x", "DEFENSE_" + "SPECS.md line",
                 "(" + "DESIGN" + ".md, \"Contracts\")", "shared/" + "seeds/000.txt"):
        assert OUTSIDE.search(text), text
    assert not OUTSIDE.search("docs/design.md and docs/defense-specs.md; DEFENSE_" + "SPECS 6.4")


# -- every docs/ path, seed and section cited resolves ---------------------------------------------

def test_every_docs_path_mentioned_exists():
    missing = sorted({f"{name}: {path}" for name in tracked_text_files()
                      for path in re.findall(r"docs/[\w./-]*\w\.md", read(name)) if not (ROOT / path).is_file()})
    assert not missing, missing


def test_relative_links_between_the_docs_resolve():
    broken = []
    for page in sorted(DOCS.glob("*.md")):
        for target in re.findall(r"\]\((?!https?:|#)([^)#\s]+)", page.read_text(encoding="utf-8")):
            if not (page.parent / target).exists():
                broken.append(f"{page.name}: {target}")
    assert not broken, broken


def test_every_cited_seed_paper_has_an_entry():
    papers = read("docs/papers.md")
    cited = {f"seed {m}" for name in tracked_text_files() if not name.startswith("docs/")
             for m in re.findall(r"\bseed (00\d)\b", read(name))}
    assert cited, "no seed paper cited anywhere: the pattern is wrong"
    missing = sorted(seed for seed in cited if not re.search(rf"^### {seed}\b", papers, re.M))
    assert not missing, missing
    assert {"seed 000", "seed 001", "seed 002", "seed 003", "seed 004"} <= cited


def test_every_spec_section_cited_exists():
    """``docs/defense-specs.md sec. N`` (and the older ``DEFENSE_SPECS N`` still in stored values)."""
    sections = set(filter(None, spec_sections().values()))
    pattern = re.compile(r"(?:docs/defense-specs\.md sec\.|DEFENSE_" + r"SPECS(?: sec\.)?) (\d+(?:\.\d+)?)")
    cited = [(name, number) for name in tracked_text_files() for number in pattern.findall(read(name))]
    assert len(cited) > 20, "the spec citation pattern finds almost nothing"
    missing = sorted({f"{name}: sec. {number}" for name, number in cited if number not in sections})
    assert not missing, missing


def test_every_spec_line_cited_lies_in_its_section():
    """``[DS 6.4 l.530]`` (the paper-scale suites): line 530 of docs/defense-specs.md is in sec. 6.4."""
    sections = spec_sections()
    checked, wrong = 0, []
    for name in tracked_text_files():
        text = re.sub(r"\n\s*#\s*", " ", read(name))   # a citation may wrap onto the next comment line
        for body in re.findall(r"\[DS ([^\]]*)\]", text):
            section = None
            for cited, first, last in re.findall(r"(?:(\d+(?:\.\d+)?) )?l\.(\d+)(?:-(\d+))?", body):
                section = cited or section
                for line in range(int(first), int(last or first) + 1):
                    checked += 1
                    if section is None or not in_section(sections.get(line), section):
                        wrong.append(f"{name}: [DS {body}] line {line} is in sec. {sections.get(line)}")
    assert checked > 50, "the [DS ...] citations were not found"
    assert not wrong, wrong


def test_design_sections_cited_in_docstrings_exist():
    headings = set(re.findall(r"^##+ (.+)$", read("docs/design.md"), re.M))
    cited = {(name, section) for name in tracked_text_files()
             for section in re.findall(r'docs/design\.md, "([^"]+)"', read(name))}
    assert cited
    missing = sorted(f"{name}: {section}" for name, section in cited if section not in headings)
    assert not missing, missing


@lru_cache(maxsize=None)
def defined_names(path: str) -> frozenset[str]:
    """Top-level and class-level names a module defines (functions, classes, assignments)."""
    names = set()
    for node in ast.walk(ast.parse(read(path))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return frozenset(names)


def test_file_and_function_references_in_the_docs_exist():
    """Every ``path.py:name`` (and ``path.py:Class.method``) in docs/*.md names a tracked file that
    defines it, and every backticked path ending in .py, .yaml or / exists."""
    checked, missing = 0, []
    for page in sorted(DOCS.glob("*.md")):
        text = page.read_text(encoding="utf-8")
        for path, dotted in re.findall(r"`([\w/.-]+\.py):([\w.]+)`", text):
            checked += 1
            if not (ROOT / path).is_file():
                missing.append(f"{page.name}: {path} (no such file)")
            elif not set(dotted.split(".")) <= defined_names(path):
                missing.append(f"{page.name}: {path}:{dotted} (not defined there)")
        for path in re.findall(r"`((?:bench|attacks|defenses|results|tests|examples)/[\w/.-]+(?:\.py|\.yaml|/))`", text):
            checked += 1
            if "NAME" not in path and not (ROOT / path).exists():   # NAME: a placeholder in a how-to
                missing.append(f"{page.name}: {path} (no such path)")
    assert checked > 100, "the reference patterns find almost nothing"
    assert not missing, "\n".join(missing)
