"""How the lab hooks moto: `@wrap(cls, "method")` replaces a moto method by one that receives
the original first. One owner for every patch module (patches, strict, timing, distribution);
it imports nothing of the lab, so any module may use it without an import cycle."""

from __future__ import annotations

import functools
from typing import Any, Callable


def wrap(cls: Any, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: replace cls.name by f(original, *args, **kwargs)."""

    def deco(f: Callable[..., Any]) -> Callable[..., Any]:
        orig = getattr(cls, name)

        @functools.wraps(orig)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return f(orig, *args, **kwargs)

        setattr(cls, name, wrapper)
        return f

    return deco
