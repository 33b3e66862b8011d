"""Dims of symbolic shapes: an int, or a str naming a symbolic dim ('batch', 'sequence') or an expression of
them. Products are kept canonical ('12*batch*sequence': coefficient first, symbols sorted) so that equal dims
compare equal; other expressions are bracketed text ('(sequence)+(1)'). Unknown dims are None or ONNX's made-up
'unk__<n>' names.
"""
from __future__ import annotations

import math
import re
from fractions import Fraction

import numpy as np

_PRODUCT = re.compile(r"^(\d+\*)?[A-Za-z_][\w.]*(\*[A-Za-z_][\w.]*)*$")  # '12*batch*sequence'


def is_unknown_dim(dim) -> bool:
    """None, or a name ONNX inference made up for a dim it could not work out ('unk__3')."""
    return dim is None or (isinstance(dim, str) and dim.startswith("unk__"))


def _factors(dim) -> tuple[int, list[str]] | None:
    """(integer coefficient, sorted symbol names) of a product like '12*batch*sequence', or None for another
    expression."""
    if isinstance(dim, (int, np.integer)):
        return int(dim), []
    if isinstance(dim, str) and _PRODUCT.match(dim):
        parts = dim.split("*")
        if parts[0].isdigit():
            return int(parts[0]), sorted(parts[1:])
        return 1, sorted(parts)
    return None


def _product_dim(coefficient: int, symbols: list[str]):
    """The canonical text of a product: the coefficient first (left out when 1), symbols sorted."""
    if not symbols or coefficient == 0:
        return coefficient
    text = "*".join(sorted(symbols))
    return text if coefficient == 1 else f"{coefficient}*{text}"


def mul(a, b):
    """a * b over dims (ints multiply; symbols form a canonical product 'a*b')."""
    fa, fb = _factors(a), _factors(b)
    if fa is not None and fb is not None:
        return _product_dim(fa[0] * fb[0], fa[1] + fb[1])
    if a == 1:
        return b
    if b == 1:
        return a
    return f"({a})*({b})"


def div(a, b):
    """a / b over dims, cancelling common symbols; an integer division that leaves a remainder gives None."""
    fa, fb = _factors(a), _factors(b)
    if fa is not None and fb is not None:
        rest = list(fa[1])
        for s in fb[1]:
            if s not in rest:
                break
            rest.remove(s)
        else:
            if fb[0] and fa[0] % fb[0] == 0:
                return _product_dim(fa[0] // fb[0], rest)
            if not fa[1] and not fb[1]:
                return None
    if b == 1:
        return a
    return f"({a})/({b})"


def arith(op: str, a, b):
    """One entry of an elementwise op over dims; None when it can't be known."""
    if isinstance(a, (bool, np.bool_)) or isinstance(b, (bool, np.bool_)):
        return None
    if isinstance(a, (int, np.integer)) and isinstance(b, (int, np.integer)):
        a, b = int(a), int(b)
        if op == "Add":
            return a + b
        if op == "Sub":
            return a - b
        if op == "Mul":
            return a * b
        if op == "Div":
            return None if b == 0 else int(a / b) if (a < 0) != (b < 0) else a // b
        if op == "Mod":
            return None if b == 0 else a % b
        if op == "Max":
            return max(a, b)
        if op == "Min":
            return min(a, b)
        if op == "Equal":
            return a == b
        return None
    if op == "Mul":
        return mul(a, b)
    if op == "Div":
        return div(a, b)
    if op == "Add":
        return a if b == 0 else b if a == 0 else f"({a})+({b})"
    if op == "Sub":
        return a if b == 0 else f"({a})-({b})"
    if op == "Equal":  # a symbolic dim is a size: never <= 0, and equal to itself
        if a == b:
            return True
        other = b if isinstance(b, (int, np.integer)) else a if isinstance(a, (int, np.integer)) else None
        return False if other is not None and other <= 0 else None
    if op == "Max":
        return a if b in (0, 1) else b if a in (0, 1) else a if a == b else None
    if op == "Min":
        return b if a == b or b in (0, 1) else a if a in (0, 1) else None
    return None


def broadcast(a: tuple, b: tuple) -> tuple | None:
    """Numpy broadcasting of two shapes over dims (None when two symbolic dims can't be matched)."""
    out = []
    for k in range(max(len(a), len(b))):
        x = a[len(a) - 1 - k] if k < len(a) else 1
        y = b[len(b) - 1 - k] if k < len(b) else 1
        if x == 1:
            out.append(y)
        elif y == 1 or x == y:
            out.append(x)
        elif is_unknown_dim(x) or is_unknown_dim(y):
            out.append(None)
        elif isinstance(x, str) and isinstance(y, int) or isinstance(y, str) and isinstance(x, int):
            out.append(x if isinstance(x, int) else y)  # a symbolic dim broadcast with n > 1 must be n
        else:
            return None
    return tuple(reversed(out))


def example_dim(dim, sizes: dict[str, int]) -> int | None:
    """A dim's size when each symbol takes its size in `sizes` (None for an unknown dim or symbol)."""
    if isinstance(dim, (int, np.integer)):
        return int(dim)
    if is_unknown_dim(dim):
        return None
    if dim in sizes:
        return sizes[dim]
    factors = _factors(dim)
    if factors is not None:
        if any(s not in sizes for s in factors[1]):
            return None
        return factors[0] * math.prod(sizes[s] for s in factors[1])
    return _evaluate_expression(dim, sizes)


def _evaluate_expression(text: str, sizes: dict[str, int]) -> int | None:
    """An expression of symbols, integers, + - * / and brackets (as made by arith), evaluated exactly."""
    tokens = re.findall(r"\d+|[A-Za-z_][\w.]*|[()+\-*/]|\S", text)
    position = 0

    def atom() -> Fraction | None:
        nonlocal position
        if position >= len(tokens):
            return None
        token = tokens[position]
        position += 1
        if token == "(":
            value = expression()
            if position >= len(tokens) or tokens[position] != ")":
                return None
            position += 1
            return value
        if token.isdigit():
            return Fraction(int(token))
        return Fraction(sizes[token]) if token in sizes else None

    def chain(operand, operators: str) -> Fraction | None:
        nonlocal position
        value = operand()
        while value is not None and position < len(tokens) and tokens[position] in operators:
            op = tokens[position]
            position += 1
            other = operand()
            if other is None or op == "/" and other == 0:
                return None
            value = value + other if op == "+" else value - other if op == "-" else \
                value * other if op == "*" else value / other
        return value

    def term() -> Fraction | None:
        return chain(atom, "*/")

    def expression() -> Fraction | None:
        return chain(term, "+-")

    value = expression()
    if value is None or position != len(tokens) or value.denominator != 1:
        return None
    return int(value)
