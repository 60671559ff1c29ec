"""User text (notes, reasons, reviewer names, slide ids, cohort and file names) shown as text, never as Markdown."""

from __future__ import annotations

import re

# CommonMark lets a backslash escape any ASCII punctuation; Streamlit's own directives (:red[...], :material/x:,
# $math$) are punctuation-led too, so escaping all of it shows the text exactly as typed.
_PUNCT = re.compile(r"([!-/:-@\[-`{-~])")
# GFM turns bare URLs and e-mail addresses into links even when escaped (it links the decoded text): an invisible
# word joiner after "://", "www" and "@" leaves the text as typed on screen but no longer a link target.
_AUTOLINK = re.compile(r"(://|(?i:www)(?=\.)|@)")
WORD_JOINER = "\u2060"


def md(text: object) -> str:
    """``text`` escaped for ``st.markdown`` / ``st.success`` / ``st.caption`` and friends: it renders as typed."""
    return _PUNCT.sub(r"\\\1", _AUTOLINK.sub(r"\1" + WORD_JOINER, str(text))).replace("\n", "  \n")
