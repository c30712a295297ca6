"""Text helpers shared by every floor."""

__all__ = ["clip"]


def clip(text, limit):
    """``text`` as a string of at most ``limit`` characters, cut with an ellipsis (``None``: "")."""
    text = "" if text is None else str(text)
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"
