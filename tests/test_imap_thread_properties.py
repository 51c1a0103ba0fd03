"""THREAD REFERENCES (RFC 5256 4) against a plain statement of the RFC's six steps: on any
small mailbox of Message-IDs, References and In-Reply-To (cycles, duplicates, messages naming
themselves, ids no message has), `references()` builds the same threads as walking parent
links up to the root for every loop check and comparing subjects as the RFC says.

The interpretations the RFC leaves open are the ones `references()` shares with Dovecot: a
second message with a Message-ID already seen is a message of its own; In-Reply-To counts
only without References (its first id); a hidden subject (`[...]`) gathers nothing; after
step 5 the threads keep step 4's order, a new dummy taking the place of the thread it was
made for."""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from datetime import datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from encimap.imap.commands import thread
from encimap.imap.commands.sort import MessageFields, subject_info
from encimap.imap.linkcut import Forest
from encimap.mime import SUBJECT_PLACEHOLDER
from tests.imap_support import thread_items

IDS = [f"<{n}@x>" for n in range(6)]
SUBJECTS = ["a", "Re: a", "Fwd: a", "a (fwd)", "b", "RE: b", "", "[...]", "Re: [...]"]


@dataclass
class Mail:
    message_id: list[str] | None  # the tokens of its Message-ID field; None: no such field
    references: list[list[str]]  # one list per References field
    in_reply_to: list[str] | None
    subject: str | None
    day: int | None

    def header(self) -> bytes:
        lines = []
        if self.message_id is not None:
            lines.append("Message-ID: " + " ".join(self.message_id))
        lines.extend("References: " + " ".join(field) for field in self.references)
        if self.in_reply_to is not None:
            lines.append("In-Reply-To: " + " ".join(self.in_reply_to))
        if self.subject is not None:
            lines.append(f"Subject: {self.subject}")
        if self.day is not None:
            lines.append(f"Date: {self.day} Jan 2024 10:00:00 +0000")
        return ("\r\n".join(["From: a@example.org", *lines]) + "\r\n\r\n").encode()


ids = st.lists(st.sampled_from([*IDS, "junk"]), max_size=6)
mails = st.builds(
    Mail,
    message_id=st.none() | st.lists(st.sampled_from([*IDS, "junk"]), max_size=2),
    references=st.lists(ids, max_size=2),
    in_reply_to=st.none() | ids,
    subject=st.none() | st.sampled_from(SUBJECTS),
    day=st.none() | st.integers(min_value=1, max_value=3),
)


Tree = tuple[int | None, list["Tree"]]  # (sequence number or None for a dummy, children)


def _rfc_references(mails: list[Mail], fields: list[MessageFields]) -> list[Tree]:
    """RFC 5256 4, step by step, with the straightforward loop check."""
    parent: dict[int, int | None] = {}
    message: dict[int, int] = {}  # container -> sequence number
    named: dict[str, int] = {}

    def container(message_id: str | None) -> int:
        if message_id in named:
            return named[message_id]
        number = len(parent)
        parent[number] = None
        if message_id is not None:
            named[message_id] = number
        return number

    def inside(node: int | None, top: int) -> bool:
        while node is not None:
            if node == top:
                return True
            node = parent[node]
        return False

    # (1) link the messages by their references
    for seq, mail in enumerate(mails, 1):
        own = [t for t in mail.message_id or [] if t.startswith("<")][:1]
        me = container(own[0] if own else None)
        if me in message:
            me = container(None)
        message[me] = seq
        refs = [t for field in mail.references for t in field if t.startswith("<")]
        if not refs:
            refs = [t for t in mail.in_reply_to or [] if t.startswith("<")][:1]
        chain = [container(ref) for ref in refs]
        for up, down in itertools.pairwise(chain):
            if parent[down] is None and up != down and not inside(up, down):
                parent[down] = up
        parent[me] = None
        if chain and chain[-1] != me and not inside(chain[-1], me):
            parent[me] = chain[-1]

    def key(tree: Tree) -> tuple[datetime, int]:
        seq, children = tree
        if seq is None:
            return min(key(child) for child in children)
        return fields[seq - 1].key("DATE"), seq

    def built(node: int) -> list[Tree]:
        """(3) the container's thread, dummies below the top spliced into their level."""
        children = [t for c in parent if parent[c] == node for t in built(c)]
        children.sort(key=key)  # (4)
        return [(message[node], children)] if node in message else children

    # (2) the roots, (3) a dummy root stays only with two or more children, (4) sorted
    roots: list[Tree] = []
    for node in (n for n in parent if parent[n] is None):
        tree = built(node)
        if node not in message and len(tree) > 1:
            roots.append((None, tree))
        else:
            roots.extend(tree)
    roots.sort(key=key)

    # (5) gather threads by base subject
    hidden = subject_info(SUBJECT_PLACEHOLDER.decode())[0]

    def subject(tree: Tree) -> tuple[str, bool]:
        seq = tree[0] if tree[0] is not None else tree[1][0][0]
        base, reply = subject_info(fields[seq - 1].headers.first("subject") or "")
        return ("" if base == hidden else base), reply

    table: dict[str, Tree] = {}
    for tree in roots:
        base, reply = subject(tree)
        old = table.get(base)
        if base and (
            old is None
            or (tree[0] is None and old[0] is not None)
            or (subject(old)[1] and not reply)
        ):
            table[base] = tree
    result: list[Tree] = []
    for index, tree in enumerate(roots):
        base, reply = subject(tree)
        target = table.get(base) if base else None
        if target is None or target is tree:
            result.append(tree)
        elif target[0] is None and tree[0] is None:
            target[1].extend(tree[1])
        elif target[0] is None or (reply and not subject(target)[1]):
            target[1].append(tree)
        else:
            dummy: Tree = (None, [target, tree])
            table[base] = dummy
            if any(t is target for t in result):
                result[[id(t) for t in result].index(id(target))] = dummy
            else:
                roots[[id(t) for t in roots].index(id(target), index)] = dummy

    # (6) every level sorted again
    def resorted(tree: Tree) -> Tree:
        return tree[0], sorted((resorted(child) for child in tree[1]), key=key)

    return [resorted(tree) for tree in result]


def _threads(roots: list[thread._Container]) -> list[Tree]:
    def tree(container: thread._Container) -> Tree:
        number = None if container.message is None else container.message.number
        return number, [tree(child) for child in container.children]

    return [tree(root) for root in roots]


@settings(max_examples=1500, deadline=None)
@given(st.lists(mails, max_size=9))
def test_references_threads_as_the_rfc_states(mails):
    items = thread_items([mail.header() for mail in mails])
    fields = [item.fields for item in items]
    assert _threads(thread.references(items)) == _rfc_references(mails, fields)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 40), st.integers(0, 40)), max_size=120))
def test_the_link_cut_forest_finds_the_roots_that_parent_links_name(steps):
    """Each step links a root below a node of another tree (True) or cuts a node from its
    parent (False); after each, every node's root is the one its parent links lead to."""
    forest = Forest()
    parent: list[int | None] = []
    for _ in range(41):
        forest.add()
        parent.append(None)

    def root(node: int) -> int:
        while (above := parent[node]) is not None:
            node = above
        return node

    for linking, a, b in steps:
        if linking:
            child = root(a)
            if root(b) != child:
                forest.link(child, b)
                parent[child] = b
        else:
            forest.cut(a)
            parent[a] = None
        assert [forest.root(node) for node in range(41)] == [root(n) for n in range(41)]


def _rfc_base_subject(subject: str) -> tuple[str, bool]:
    """RFC 5256 2.1 step by step, each cut a new string (the blob pattern kept apart from the
    spaces around it, which a backtracking regex would try every split of)."""
    text = " ".join(subject.split())
    reply = False
    while True:
        before = text
        trailer = re.sub(r"\s*\(fwd\)\s*$", "", text, flags=re.I)  # (2)
        reply = reply or trailer != text
        text = trailer
        while True:  # (3) and (4)
            stripped = re.sub(
                r"^\s*(?:\[[^\[\]]*\]\s*)*(?:re|fwd?)\s*(?:\[[^\[\]]*\])?\s*:",
                "",
                text,
                count=1,
                flags=re.I,
            )
            if stripped != text:
                reply = True
            else:
                blob = re.sub(r"^\s*\[[^\[\]]*\]\s*", "", text, count=1)
                stripped = blob or text
            if stripped == text:
                break
            text = stripped.strip()
        if text[:5].lower() == "[fwd:" and text.endswith("]"):  # (5)
            text = text[5:-1].strip()
            reply = True
        if text == before:
            return text.upper(), reply


SUBJECT_TOKENS = ["re", "Re", "FWD", "fw", "fwd", ":", " ", "  ", "\t", "[", "]", "[b]", "[fwd:",
                  "(fwd)", "(FwD)", "x", "y z"]  # fmt: skip


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(SUBJECT_TOKENS), max_size=24).map("".join))
def test_base_subjects_are_as_the_rfc_states(subject):
    assert subject_info(subject) == _rfc_base_subject(subject)
