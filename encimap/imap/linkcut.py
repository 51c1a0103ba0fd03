"""Link-cut trees (Sleator and Tarjan), kept as splay trees: a forest of rooted trees over the
numbers 0..n-1 in which hanging a tree's root below a node, cutting a node from its parent and
finding the root of a node's tree each cost O(log n) amortised, however deep the trees are.
THREAD REFERENCES asks "would this link make a loop" with it (commands/thread.py).

Each tree is cut into preferred paths; each path is a splay tree ordered by depth (`left` is
shallower), whose top points (`up`) to the node above the path. `up` of a splay tree's inner
node is its splay parent, so a node is a splay tree's top when its `up` does not name it as a
child. Written without recursion: a path may be thousands of nodes long."""

from __future__ import annotations

_NONE = -1


class Forest:
    __slots__ = ("_left", "_right", "_up")

    def __init__(self) -> None:
        self._left: list[int] = []
        self._right: list[int] = []
        self._up: list[int] = []

    def add(self) -> int:
        """A new node, the root of a tree of its own: its number."""
        self._left.append(_NONE)
        self._right.append(_NONE)
        self._up.append(_NONE)
        return len(self._up) - 1

    def root(self, node: int) -> int:
        """The root of the tree that holds `node`."""
        left = self._left
        self._access(node)
        while left[node] != _NONE:
            node = left[node]
        self._splay(node)  # keeps the amortised bound for the walk down
        return node

    def link(self, child: int, parent: int) -> None:
        """Hangs `child`, a root, below `parent` (a node of another tree)."""
        self._access(child)  # child is the top of its path: no left, and no right after access
        self._up[child] = parent

    def cut(self, node: int) -> None:
        """Cuts `node` (and its subtree) from its parent, if it has one."""
        self._access(node)
        above = self._left[node]
        if above != _NONE:
            self._up[above] = _NONE
            self._left[node] = _NONE

    def _access(self, node: int) -> None:
        """Makes the path from the root to `node` preferred, ending at `node`, and `node` the
        top of its splay tree."""
        right, up = self._right, self._up
        below = _NONE
        current = node
        while current != _NONE:
            self._splay(current)
            right[current] = below  # the old deeper part becomes a path of its own
            below = current
            current = up[current]
        self._splay(node)

    def _splay(self, node: int) -> None:
        left, right, up = self._left, self._right, self._up
        while True:
            parent = up[node]
            if parent == _NONE or (left[parent] != node and right[parent] != node):
                return
            grand = up[parent]
            if grand != _NONE and (left[grand] == parent or right[grand] == parent):
                same_side = (left[grand] == parent) == (left[parent] == node)
                self._rotate(parent if same_side else node)
            self._rotate(node)

    def _rotate(self, node: int) -> None:
        """Lifts `node` above its splay parent."""
        left, right, up = self._left, self._right, self._up
        parent = up[node]
        grand = up[parent]
        if left[parent] == node:
            moved = right[node]
            left[parent] = moved
            right[node] = parent
        else:
            moved = left[node]
            right[parent] = moved
            left[node] = parent
        if moved != _NONE:
            up[moved] = parent
        up[parent] = node
        up[node] = grand  # a splay parent, or the node above the path
        if grand != _NONE:
            if left[grand] == parent:
                left[grand] = node
            elif right[grand] == parent:
                right[grand] = node
