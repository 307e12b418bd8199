"""MkDocs hook: a pipe written ``\\|`` inside a table cell renders as ``|``.

GitHub's Markdown needs ``\\|`` for a pipe inside a table cell even within a code span (the README's
environments table, which the site includes, has ``\\|a\\|^2``); Python-Markdown leaves the backslash in a
code span. Only table cells of the rendered pages are touched.
"""

from __future__ import annotations

import re
from typing import Any

_CELL = re.compile(r"<td[^>]*>.*?</td>", re.S)


def on_page_content(html: str, **kwargs: Any) -> str:
    return _CELL.sub(lambda m: m.group(0).replace("\\|", "|"), html)
