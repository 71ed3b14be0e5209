"""Report text normalization: the documented, configurable rules that turn raw text into a target.

Rules, applied in this order (each can be switched in `TextRules`):
1. values such as '', 'None.', 'N/A' count as absent (None), and so do template placeholders and empty
   boilerplate ('Replace this - DESCRIPTION OF THE IMAGE', 'see above', only punctuation or anonymisation
   tokens: `TextRules.placeholder_patterns`, matched on the normalized text);
2. IU de-identification placeholders (`XXXX`, also inside `x-XXXX`) are kept as one token or dropped;
3. list numbering at the start of an item ('1. ', '2) ') is removed; decimals such as '2.5 cm' are not;
4. whitespace is collapsed; 5. text is lowercased.
Punctuation is kept: tokenization (at training time) decides what a token is.
"""

from __future__ import annotations

import re

from radcap.core.settings import TextRules

# '1. ', '2) ' at the start of the text or after a sentence end / whitespace; not '2.5' or 'T12.'.
_LIST_NUMBER = re.compile(r"(?:(?<=^)|(?<=\s))\d{1,2}[.)](?=\s|$)")
_WHITESPACE = re.compile(r"\s+")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.,;:])")
_DANGLING_HYPHEN = re.compile(r"(\w)-(?=[\s.,;:]|$)")  # 'x-' left behind when 'x-XXXX' loses its placeholder


def clean_raw(value: object, rules: TextRules) -> str | None:
    """Raw text with surrounding whitespace stripped, or None when it is absent or a placeholder."""
    if value is None or (isinstance(value, float) and value != value):  # None or NaN
        return None
    text = str(value).strip()
    if text.lower() in rules.empty_values:
        return None
    return text


def normalize(value: str | None, rules: TextRules) -> str | None:
    if value is None:
        return None
    text = value
    anon = re.compile(rules.anonymized_pattern)
    if rules.anonymized == "keep":
        text = anon.sub(rules.anonymized_token, text)
    else:
        text = _DANGLING_HYPHEN.sub(r"\1", anon.sub("", text))
    if rules.strip_list_numbering:
        text = _LIST_NUMBER.sub(" ", text)
    text = _WHITESPACE.sub(" ", text).strip()
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
    if rules.lowercase:
        text = text.lower()
    return text or None


def placeholder(text: str | None, rules: TextRules) -> bool:
    """True when `text` is a template placeholder or empty boilerplate (`TextRules.placeholder_patterns`)."""
    return text is not None and any(re.search(p, text, re.IGNORECASE) for p in rules.placeholder_patterns)


def choose_target(findings: str | None, impression: str | None, rules: TextRules) -> tuple[str | None, str]:
    """The normalized target and which section it came from (see `TextRules.target`)."""
    if rules.target == "findings+impression":
        parts = [p for p in (findings, impression) if p]
        return (" ".join(parts) or None), "findings+impression"
    primary, other = (findings, impression) if rules.target == "findings" else (impression, findings)
    other_name = "impression" if rules.target == "findings" else "findings"
    if primary:
        return primary, rules.target
    if rules.fallback_to_other_section and other:
        return other, other_name
    return None, rules.target
