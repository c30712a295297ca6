"""Text helpers shared by every floor."""

import unicodedata

__all__ = ["BIDI_CONTROLS", "clip", "first_line", "isolate", "needs_isolation", "strip_bidi_controls"]

# Characters that change the direction of the text around them: embeddings and overrides
# (U+202A-U+202E), isolates (U+2066-U+2069), the left-to-right, right-to-left and Arabic
# letter marks (U+200E, U+200F, U+061C).  U+202E turns "exe.txt" into "txt.exe" on screen.
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c")
_FSI, _PDI = "\u2068", "\u2069"
_ISOLATE_OPENERS = frozenset("\u2066\u2067\u2068")
_RTL_CLASSES = frozenset({"R", "AL", "AN", "LRE", "LRO", "RLE", "RLO", "PDF", "LRI", "RLI", "FSI", "PDI"})


def clip(text, limit):
    """``text`` as a string of at most ``limit`` characters, cut with an ellipsis (``None``: "")."""
    text = "" if text is None else str(text)
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def first_line(text, limit):
    """The first non-blank line of ``text``, clipped to ``limit`` characters."""
    for line in ("" if text is None else str(text)).splitlines():
        if line.strip():
            return clip(line.strip(), limit)
    return ""


def strip_bidi_controls(text):
    """``text`` without the characters of :data:`BIDI_CONTROLS`."""
    return "".join(ch for ch in str(text) if ch not in BIDI_CONTROLS)


def needs_isolation(text, rtl_context=False):
    """Whether ``text`` could reorder (or be reordered by) the words around it: it holds a
    right-to-left letter, an Arabic number or a direction control, or it goes into right-to-left
    text (``rtl_context``)."""
    text = "" if text is None else str(text)
    return bool(text) and (rtl_context or any(unicodedata.bidirectional(ch) in _RTL_CLASSES for ch in text))


def isolate(text, always=True):
    """``text`` between FIRST STRONG ISOLATE and POP DIRECTIONAL ISOLATE (U+2068 ... U+2069),
    for plain text (emails, titles): its direction neither leaks into nor takes from the text
    around it.  Unmatched isolate controls inside are balanced so that they cannot end the
    isolate early; an empty text stays empty.  ``always=False``: only when
    :func:`needs_isolation` (left-to-right text in left-to-right surroundings stays as it is)."""
    text = "" if text is None else str(text)
    if not text:
        return ""
    if not always and not needs_isolation(text):
        return text
    out, depth = [], 0
    for ch in text:
        if ch in _ISOLATE_OPENERS:
            depth += 1
        elif ch == _PDI:
            if not depth:
                continue
            depth -= 1
        out.append(ch)
    return _FSI + "".join(out) + _PDI * depth + _PDI
