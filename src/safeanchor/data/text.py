"""Text helpers shared by the recipes' data stages."""

from __future__ import annotations


def finish_at_sentence(text: str) -> str:
    """Cut a generated answer that ran into the token limit back to its last ``.`` or newline, when
    that keeps more than half of it, so a training target does not stop mid-sentence.

    >>> finish_at_sentence("Mix the flour. Then knead it for ten min")
    'Mix the flour.'
    >>> finish_at_sentence("Short. And then a long tail that goes on and on")
    'Short. And then a long tail that goes on and on'
    """
    cut = max(text.rfind("."), text.rfind("\n"))
    return text[: cut + 1].strip() if cut > len(text) // 2 else text.strip()


__all__ = ["finish_at_sentence"]
