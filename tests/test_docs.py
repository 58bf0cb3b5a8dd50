"""The documentation's links point at files and headings that exist."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import REPO

LINK = re.compile(r"\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    return {slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", doc.read_text(), re.M)}


def test_every_relative_link_and_anchor_resolves() -> None:
    docs = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    broken = []
    for doc in docs:
        for target in LINK.findall(doc.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            path, _, anchor = target.partition("#")
            dest = (doc.parent / path).resolve() if path else doc
            if not dest.exists():
                broken.append(f"{doc.name}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{doc.name}: {target} (no such heading)")
    assert broken == []


PATH_IN_BACKTICKS = re.compile(
    r"`((?:device|hw|sim|relay|bench|tests|deploy|examples|scripts)/[\w/.\-]*)`"
)


def test_every_repository_path_the_docs_name_exists() -> None:
    """A module moved (device/outbox.py became device/outbox/) must take the docs along."""
    docs = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    missing = [
        f"{doc.name}: {m.group(1)}"
        for doc in docs
        for m in PATH_IN_BACKTICKS.finditer(doc.read_text())
        if not (REPO / m.group(1)).exists()
    ]
    assert missing == []


def test_the_export_doc_names_every_field_of_its_schema() -> None:
    """docs/export.md and docs/export.schema.json describe the same format: every
    property the schema defines is named in the doc (or in the wire format's tables, which
    it refers to for the SOS records' data), and the doc's example is valid."""
    import json

    from tests.helpers import export_problems

    schema = json.loads((REPO / "docs" / "export.schema.json").read_text())
    doc = (REPO / "docs" / "export.md").read_text()
    wire = (REPO / "docs" / "wire-format.md").read_text()
    names: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            names.update(node.get("properties", {}))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    assert len(names) > 30
    assert sorted(n for n in names if f"`{n}`" not in doc + wire) == []
    assert sorted(n for n in names if f"`{n}`" not in doc) == [
        "contacts", "events", "fix_age", "owner", "points", "shared", "trigger"
    ]  # fmt: skip
    example = re.search(r"```json\n(.+?)```", doc, re.S)
    assert example is not None
    text = example.group(1).replace("…", "")
    assert export_problems(json.loads(text)) == []
    broken = json.loads(text)
    del broken["records"][0]["data"]["fix"]["lat"]
    assert export_problems(broken)  # the schema does check the data of each kind
