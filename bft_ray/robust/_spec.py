"""Parser for rule and attack specifications such as ``"bucketing(s=3)+cc(tau=0.5)"``."""

from __future__ import annotations

import ast
from typing import Any

from bft_ray.errors import ConfigError

__all__ = ["parse_spec"]


def _parse_stage(text: str, whole: str) -> tuple[str, dict[str, Any]]:
    text = text.strip()
    if not text:
        raise ConfigError(f"empty stage in {whole!r}: write names joined by '+', e.g. 'nnm+krum'")
    if "(" not in text:
        return text.lower(), {}
    try:
        node = ast.parse(text, mode="eval").body
    except SyntaxError:
        raise ConfigError(
            f"cannot parse {text!r} in {whole!r}: write name(key=value, ...)"
        ) from None
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name) or node.args:
        raise ConfigError(
            f"cannot parse {text!r} in {whole!r}: write name(key=value, ...) with keyword "
            "arguments only"
        )
    kwargs: dict[str, Any] = {}
    for kw in node.keywords:
        if kw.arg is None:
            raise ConfigError(f"'**' is not allowed in {whole!r}")
        try:
            kwargs[kw.arg] = ast.literal_eval(kw.value)
        except ValueError:
            raise ConfigError(
                f"argument {kw.arg!r} of {text!r} must be a literal (number, string, ...)"
            ) from None
    return node.func.id.lower(), kwargs


def parse_spec(spec: str) -> list[tuple[str, dict[str, Any]]]:
    """Split ``"a(x=1)+b"`` into ``[("a", {"x": 1}), ("b", {})]``.

    Example:
        >>> parse_spec("bucketing(s=3)+CC(tau=0.5)")
        [('bucketing', {'s': 3}), ('cc', {'tau': 0.5})]
    """
    if not isinstance(spec, str):
        raise ConfigError(f"expected a specification string, got {type(spec).__name__}")
    stages: list[str] = []
    depth = 0
    current = ""
    # Split on '+' only outside parentheses, so "ipm(epsilon=+1)" still parses.
    for ch in spec:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "+" and depth == 0:
            stages.append(current)
            current = ""
        else:
            current += ch
    stages.append(current)
    return [_parse_stage(stage, spec) for stage in stages]
