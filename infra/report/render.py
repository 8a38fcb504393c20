"""Blocks of a report, rendered as Markdown or as HTML, every text escaped.

The report quotes what clients sent (user agents, addresses, ids from paths):
attacker-controlled text. Nothing in a block is markup: the renderers escape
every string, in HTML with `html.escape` and in Markdown with a backslash
before each character that could start markup or an HTML tag. The HTML page
also forbids scripts in its Content-Security-Policy, and has none.
"""

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape

# Markup in Markdown starts with one of these (list and heading markers only
# at a line start, which is always ours); a backslash makes each literal.
_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>#!|~&$])")


@dataclass(frozen=True)
class Heading:
    level: int
    text: str


@dataclass(frozen=True)
class Para:
    text: str
    strong: bool = False


@dataclass(frozen=True)
class Bullets:
    items: list[str]


@dataclass(frozen=True)
class Table:
    header: tuple[str, ...]
    rows: Sequence[tuple[str, ...]] = field(default_factory=list)


@dataclass(frozen=True)
class Figure:
    svg: str  # markup we made (infra/report/svg.py), written as it is
    file: str  # the same figure as a file beside the Markdown
    caption: str


Block = Heading | Para | Bullets | Table | Figure


def md(text: str) -> str:
    """Text as Markdown shows it literally, on one line."""
    return _MD_SPECIAL.sub(r"\\\1", " ".join(text.split()))


def markdown(blocks: list[Block]) -> str:
    out: list[str] = []
    for b in blocks:
        match b:
            case Heading(level, text):
                out.append(f"{'#' * level} {md(text)}")
            case Para(text, strong):
                out.append(f"**{md(text)}**" if strong else md(text))
            case Bullets(items):
                out.append("\n".join(f"- {md(i)}" for i in items) or "- (none)")
            case Table(header, rows):
                lines = ["| " + " | ".join(md(h) for h in header) + " |"]
                lines.append("|" + "|".join("---" for _ in header) + "|")
                lines += ["| " + " | ".join(md(c) for c in row) + " |" for row in rows]
                out.append("\n".join(lines))
            case Figure(_, file, caption):
                out.append(f"![{md(caption)}]({file})")
    return "\n\n".join(out) + "\n"


_STYLE = """
body { font-family: sans-serif; max-width: 60em; margin: 2em auto; line-height: 1.4; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #bbb; padding: 0.2em 0.5em; text-align: left; vertical-align: top; }
th { background: #eee; }
td { overflow-wrap: anywhere; }
.draft { color: #b00020; }
"""


def html(title: str, blocks: list[Block]) -> str:
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta http-equiv="Content-Security-Policy" '
        "content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:\">",
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>",
    ]
    for b in blocks:
        match b:
            case Heading(level, text):
                out.append(f"<h{level}>{escape(text)}</h{level}>")
            case Para(text, strong):
                body = escape(text)
                out.append(
                    f'<p class="draft"><strong>{body}</strong></p>' if strong else f"<p>{body}</p>"
                )
            case Bullets(items):
                out.append(
                    "<ul>" + "".join(f"<li>{escape(i)}</li>" for i in items or ["(none)"]) + "</ul>"
                )
            case Table(header, rows):
                head = "".join(f"<th>{escape(h)}</th>" for h in header)
                body = "".join(
                    "<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows
                )
                out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            case Figure(svg, _, caption):
                out.append(f"<figure>{svg}<figcaption>{escape(caption)}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"
