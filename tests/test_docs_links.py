"""The docs' links between pages: every relative link in README.md and docs/*.md names a
file that exists and, with a #fragment, a heading or <a id> of that file, spelled as
GitHub spells a heading's anchor. Numbers are quoted across pages by link, so a renamed
heading must not strand them."""
import functools
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]*)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def github_anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@functools.cache  # a page is linked many times
def anchors(page: Path) -> frozenset[str]:
    text = FENCE.sub("", page.read_text())
    found, seen = set(), {}
    for heading in re.findall(r"^#+ (.+)$", text, re.M):
        slug = github_anchor(heading)
        # A repeated heading gets -1, -2, ... on GitHub.
        found.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
        seen[slug] = seen.get(slug, 0) + 1
    found.update(re.findall(r'<a id="([^"]+)"', text))
    return frozenset(found)


def test_github_anchor_spelling():
    assert github_anchor("The label head's weight (issue 25, round 4)") == (
        "the-label-heads-weight-issue-25-round-4")
    assert github_anchor("SCH-GAN (`--method schgan`)") == "sch-gan---method-schgan"


def test_every_relative_link_names_a_file_and_an_anchor_that_exist():
    broken = []
    for page in PAGES:
        for target in LINK.findall(FENCE.sub("", page.read_text())):
            if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                continue
            path, _, fragment = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                broken.append(f"{page.relative_to(REPO)}: {target} (no such file)")
            elif fragment and linked.suffix == ".md" and fragment not in anchors(linked):
                broken.append(f"{page.relative_to(REPO)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)
