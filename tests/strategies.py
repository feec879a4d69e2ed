"""Hypothesis strategies the tests share.

Named functions, never lambdas, inside strategies: Hypothesis reads a lambda's source with
`ast.parse` to describe it, and on CPython 3.11.7 that can raise "SystemError: AST
constructor recursion depth mismatch" after another test drove deep recursion (a failed
clean-clone CI run: test_receive_never_raises_and_replies_are_json_objects)."""

from __future__ import annotations

from hypothesis import strategies as st


def json_values(scalars: st.SearchStrategy, *, width: int, key_size: int, max_leaves: int) -> st.SearchStrategy:
    """JSON values: `scalars`, and lists and objects of them nested up to `max_leaves`."""
    def containers(children: st.SearchStrategy) -> st.SearchStrategy:
        return st.lists(children, max_size=width) | st.dictionaries(st.text(max_size=key_size), children,
                                                                    max_size=width)
    return st.recursive(scalars, containers, max_leaves=max_leaves)
