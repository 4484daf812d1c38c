"""Text normalisation shared by the rules: what counts as "the same constraint" or "the same principal"."""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

_SPACES = re.compile(r"\s+")
_PRINCIPAL_SEPARATORS = re.compile(r"[\s_\-]+")


@lru_cache(maxsize=16384)
def norm_text(text: str) -> str:
    """NFKC, whitespace collapsed and trimmed, case folded: how constraints and capabilities compare."""
    return _SPACES.sub(" ", unicodedata.normalize("NFKC", text)).strip().casefold()


@lru_cache(maxsize=16384)
def principal_key(name: str) -> str:
    """How principals (roles, agents, delegators) compare: like `norm_text`, with `_` and `-` as spaces.

    `backend_specialist`, `Backend Specialist` and `backend-specialist` are one principal. The same
    key serves CHN-01 (continuity), ID-04 (self-delegation) and CYC-01 (cycles), so whatever counts
    as a continuation of the chain also counts as a repetition.
    """
    return _PRINCIPAL_SEPARATORS.sub(" ", unicodedata.normalize("NFKC", name)).strip().casefold()
