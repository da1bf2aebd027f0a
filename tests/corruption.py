"""Corrupting a byte string the ways a broken transfer or an attacker would: the mutations
the bitstream and server tests draw (hypothesis) and apply."""

from __future__ import annotations

from hypothesis import strategies as st

MUTATIONS = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10_000), st.integers(0, 7)),
    st.tuples(st.just("set"), st.integers(0, 10_000), st.integers(0, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 10_000), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 10_000), st.integers(0, 255)),
    st.tuples(st.just("delete"), st.integers(0, 10_000), st.integers(1, 64)),
)


def mutate(data: bytes, ops) -> bytes:
    out = bytearray(data)
    for op, pos, arg in ops:
        pos = pos % (len(out) + 1)
        if op == "flip" and pos < len(out):
            out[pos] ^= 1 << arg
        elif op == "set" and pos < len(out):
            out[pos] = arg
        elif op == "truncate":
            del out[pos:]
        elif op == "insert":
            out[pos:pos] = bytes([arg])
        elif op == "delete":
            del out[pos:pos + arg]
    return bytes(out)
