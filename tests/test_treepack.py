"""snapd/_treepack.c: the same tree bytes, child lists and totals as index._pack_py.

A tree object's bytes decide its id; one byte of difference between the C and the Python
packer would give the same directory two ids (and break deduplication across daemons built
with and without a compiler). So every field is checked against the Python packer, including
the values that make the C side hand over to Python.
"""

from __future__ import annotations

import shutil
import struct
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from snapd import index
from snapd.index import DirNode, FileNode
from snapd.store.format import ENTRY_CHUNKED, ENTRY_FILE, ENTRY_SYMLINK, TREE_MAGIC, decode_tree

needs_c = pytest.mark.skipif(index._treepack is None, reason="the C extension is not built")

ids = st.binary(min_size=32, max_size=32)
names = st.binary(min_size=1, max_size=40).filter(lambda n: b"/" not in n and b"\0" not in n)
times = st.integers(min_value=-(2**63), max_value=2**63 - 1)


@st.composite
def file_nodes(draw):
    kind = draw(st.sampled_from([ENTRY_FILE, ENTRY_CHUNKED, ENTRY_SYMLINK]))
    ref = draw(st.binary(min_size=1, max_size=200)) if kind == ENTRY_SYMLINK else draw(ids)
    mode = draw(st.sampled_from([0o644, 0o755, 0o600, 0o777, 0o4755]))
    # Mostly sizes whose sums fit 64 bits (the C path); the largest one makes some overflow.
    size = draw(st.integers(0, 2**48) | st.sampled_from([0, 2**64 - 1]))
    return FileNode(kind, mode, size, draw(times), ref)


@st.composite
def dir_nodes(draw, depth: int = 0):
    node = DirNode(mode=draw(st.sampled_from([0o755, 0o700, 0o1777])), mtime_ns=draw(times))
    for name in draw(st.lists(names, max_size=12, unique=True)):
        if depth < 2 and draw(st.booleans()) and draw(st.booleans()):
            child = draw(dir_nodes(depth + 1))
            child.encode()
            child.tree_id = draw(ids)
            node.entries[name] = child
        else:
            node.entries[name] = draw(file_nodes())
    return node


def _both(node: DirNode):
    names_ = sorted(node.entries)
    return index._pack(list(names_), node.entries), index._pack_py(list(names_), node.entries)


def test_the_extension_is_built_where_a_compiler_is():
    """CI and the benchmarks must measure the C path."""
    if not sys.platform.startswith("linux") or shutil.which("cc") is None:
        pytest.skip("no C compiler here: the fallback is expected")
    assert index._treepack is not None, "snapd._treepack is not built though a compiler is"


@needs_c
@given(dir_nodes())
def test_same_bytes_children_and_totals_as_python(node):
    c, py = _both(node)
    assert c.raw == py.raw
    assert c.kids == py.kids
    assert c.dirs == py.dirs
    assert c.nodes == py.nodes and all(a is b for a, b in zip(c.nodes, py.nodes, strict=True))
    totals = index._totals(node.entries.values())
    if c._totals is None:  # handed over to Python: only when a sum passes 64 bits
        assert totals[0] >= 2**64
    else:
        assert c._totals == totals
    assert [e.name for e in decode_tree(c.raw)] == sorted(node.entries)


@needs_c
def test_encode_caches_the_totals_it_summed():
    root = DirNode(mode=0o755)
    sub = DirNode(mode=0o755)
    sub.entries[b"a"] = FileNode(ENTRY_FILE, 0o644, 10, 1, b"\1" * 32)
    sub.encode()
    sub.tree_id = b"\2" * 32
    root.entries[b"sub"] = sub
    root.entries[b"b"] = FileNode(ENTRY_FILE, 0o644, 5, 1, b"\3" * 32)
    root.entries[b"l"] = FileNode(ENTRY_SYMLINK, 0o777, 1, 1, b"b")
    raw, kids = root.encode()
    assert root.totals == (15, 2) and root.subtree_totals() == (15, 2)
    assert kids == [b"\3" * 32, b"\2" * 32]
    assert raw.startswith(TREE_MAGIC)


@pytest.mark.parametrize(
    "node",
    [
        FileNode(ENTRY_FILE, 0o644, 1, 2**63, b"\1" * 32),  # mtime past the format's int64
        FileNode(ENTRY_FILE, 2**32, 1, 0, b"\1" * 32),  # mode past uint32
        FileNode(ENTRY_FILE, 0o644, 2**64, 0, b"\1" * 32),  # size past uint64
        FileNode(ENTRY_FILE, 0o644, -1, 0, b"\1" * 32),
    ],
)
def test_out_of_range_fields_fail_as_they_do_in_python(node):
    """The C side hands these over to Python, which raises what it always raised."""
    with pytest.raises(struct.error):
        index._pack([b"x"], {b"x": node})
    with pytest.raises(struct.error):
        index._pack_py([b"x"], {b"x": node})


def test_a_child_not_encoded_yet_is_a_bug_either_way():
    child = DirNode(mode=0o755)
    with pytest.raises(AssertionError, match="children are encoded first"):
        index._pack([b"d"], {b"d": child})


def test_a_missing_name_is_a_key_error():
    with pytest.raises(KeyError):
        index._pack([b"gone"], {})


@needs_c
def test_wrong_argument_types_are_type_errors():
    with pytest.raises(TypeError):
        index._treepack.pack((b"x",), {}, DirNode, TREE_MAGIC)
    with pytest.raises(TypeError):
        index._treepack.pack([], [], DirNode, TREE_MAGIC)
