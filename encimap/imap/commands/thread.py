"""THREAD and UID THREAD (RFC 5256): REFERENCES and ORDEREDSUBJECT over the clear outer header
fields (Message-ID, References, In-Reply-To, Subject, Date). The messages are chosen by
SEARCH's program (commands/search.py); the keys are SORT's (commands/sort.py).

A Subject that header protection replaced by its placeholder (`[...]`, RFC 9788) says nothing
about the message: the real subject is inside the encryption. Such messages are not gathered
by subject (REFERENCES step 5) nor made one ORDEREDSUBJECT thread, or every message with a
hidden subject would land in a single thread."""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from datetime import datetime

from encimap.imap.commands import SELECTED, command, never_writes
from encimap.imap.commands.sort import (
    MessageFields,
    base_subject,
    matching_fields,
    subject_info,
)
from encimap.imap.linkcut import Forest
from encimap.imap.parser import ParseError, Reader
from encimap.imap.session import Session
from encimap.mime import SUBJECT_PLACEHOLDER

ALGORITHMS = ("REFERENCES", "ORDEREDSUBJECT")
_MESSAGE_ID = re.compile(r"<[^<>\s]*>")
_HIDDEN = base_subject(SUBJECT_PLACEHOLDER.decode())


@command("THREAD", states=SELECTED, expunge_ok=False, writes=never_writes)
async def thread(session: Session, _tag: str, reader: Reader) -> str:
    return await _thread(session, reader, by_uid=False)


@command("UID THREAD", states=SELECTED, writes=never_writes)
async def uid_thread(session: Session, _tag: str, reader: Reader) -> str:
    return await _thread(session, reader, by_uid=True)


async def _thread(session: Session, reader: Reader, *, by_uid: bool) -> str:
    reader.sp()
    algorithm = reader.atom().upper()
    if algorithm not in ALGORITHMS:
        raise ParseError(f"unknown THREAD algorithm {algorithm[:20]}")
    reader.sp()
    items = [
        _Message(uid if by_uid else seq, seq, fields)
        for fields, seq, uid in await matching_fields(session, reader)
    ]
    if algorithm == "REFERENCES":
        roots = references(items)
    else:
        roots = ordered_subject(items)
    threads = "".join(f"({_inner(root)})" for root in roots)
    session.untagged(f"THREAD {threads}" if threads else "THREAD")
    return "OK Thread completed."


@dataclass(eq=False)
class _Message:
    number: int  # as reported: sequence number or UID
    seq: int
    fields: MessageFields

    @property
    def date(self) -> datetime:
        return self.fields.key("DATE")


@dataclass(eq=False)
class _Container:
    message: _Message | None = None
    parent: _Container | None = None
    children: list[_Container] = field(default_factory=list)
    node: int = -1  # its number in step 1's forest
    below: int = 0  # its children in step 1, before the lists are made

    def adopt(self, child: _Container) -> None:
        """`child`, a root, becomes the last child."""
        child.parent = self
        self.children.append(child)

    def sort_key(self) -> tuple[datetime, int]:
        """A message's sent date; a dummy's is its first child's (children sorted first)."""
        node = self
        while node.message is None and node.children:
            node = node.children[0]
        assert node.message is not None
        return node.message.date, node.message.seq


def _ids(value: str | None) -> list[str]:
    return _MESSAGE_ID.findall(value or "")


def references(items: list[_Message]) -> list[_Container]:
    """RFC 5256 4 REFERENCES, steps 1-6.

    Step 1 links a container only if that makes no loop, that is if the parent is not in the
    child's subtree. Walking up from the parent costs the tree's depth, and crafted References
    can ask that of a deep tree again and again (quadratic); a link-cut forest that mirrors
    the links answers in O(log n) amortised (its root is the child's or not)."""
    table: dict[str, _Container] = {}
    every: list[_Container] = []
    forest = Forest()

    def container_for(message_id: str | None) -> _Container:
        found = table.get(message_id) if message_id else None
        if found is None:
            found = _Container(node=forest.add())
            every.append(found)
            if message_id:
                table[message_id] = found
        return found

    def link(parent: _Container, child: _Container) -> None:
        """`child`, a root, below `parent` unless `parent` is in its tree (a loop)."""
        if parent is child or (child.below and forest.root(parent.node) == child.node):
            return
        child.parent = parent
        parent.below += 1
        forest.link(child.node, parent.node)

    for item in items:
        headers = item.fields.headers
        own = _ids(headers.first("message-id"))[:1]
        container = container_for(own[0] if own else None)
        if container.message is not None:  # a duplicate Message-ID: a message of its own
            container = container_for(None)
        container.message = item
        refs = _ids(" ".join(headers.all("references"))) or _ids(headers.first("in-reply-to"))[:1]
        chain = [container_for(ref) for ref in refs]
        for parent, child in itertools.pairwise(chain):
            if child.parent is None:  # a parent once set stays
                link(parent, child)
        last = chain[-1] if chain else None
        # its parent is the last reference now, if that makes no loop (and if it is already,
        # a cut and the same link again would change nothing)
        if container.parent is not last:
            if container.parent is not None:
                container.parent.below -= 1
                container.parent = None
                forest.cut(container.node)
            if last is not None:
                link(last, container)
    for container in every:
        if container.parent is not None:
            container.parent.children.append(container)
    roots = _pruned([c for c in every if c.parent is None])
    for root in roots:
        _sort_children(root)
    roots.sort(key=_Container.sort_key)
    roots = _merged_by_subject(roots)
    for root in roots:
        _sort_children(root)
    return roots


def _descendants(containers: list[_Container]) -> list[_Container]:
    """The containers and everything below them, each before its children: walked without
    recursion, since a thread (or one message's References) can be thousands deep."""
    found: list[_Container] = []
    stack = list(containers)
    while stack:
        container = stack.pop()
        found.append(container)
        stack.extend(container.children)
    return found


def _pruned(roots: list[_Container]) -> list[_Container]:
    """Step 3: dummies go and their children move up, so each message hangs below the
    nearest message above it; below a root that is a dummy, the messages with none above
    them stay its children if there are two or more, and a single one takes its place.
    Found in one walk from the top: splicing level by level copies a deep chain of dummies'
    children at every level."""
    result: list[_Container] = []
    for root in roots:
        tops: list[_Container] = []  # the messages with no message above them
        stack: list[tuple[_Container, _Container | None]] = [(root, None)]
        while stack:
            container, above = stack.pop()
            children = container.children
            if container.message is not None:
                container.children = []
                container.parent = above
                (tops if above is None else above.children).append(container)
                above = container
            stack.extend((child, above) for child in children)
        if root.message is None and len(tops) > 1:
            root.children = tops
            for top in tops:
                top.parent = root
            result.append(root)
        else:  # the root itself, a dummy root's single message, or nothing
            result.extend(tops)
    return result


def _sort_children(container: _Container) -> None:
    """Every level below `container` sorted, deepest first (a dummy sorts by its first
    child)."""
    for node in reversed(_descendants([container])):
        node.children.sort(key=_Container.sort_key)


def _subject(container: _Container) -> tuple[str, bool]:
    """(base subject, is a reply or forward) of the container's message or first child's."""
    node = container if container.message is not None else container.children[0]
    assert node.message is not None
    subject, reply = subject_info(node.message.fields.headers.first("subject") or "")
    return ("" if subject == _HIDDEN else subject), reply


def _merged_by_subject(roots: list[_Container]) -> list[_Container]:
    """Step 5: threads whose base subjects are equal are gathered under one root. Each
    root's subject is read once, and a thread's place is looked up, not searched for."""
    subjects = {root: _subject(root) for root in roots}
    table: dict[str, _Container] = {}
    for root in roots:
        subject, reply = subjects[root]
        if not subject:
            continue
        old = table.get(subject)
        if (
            old is None
            or (old.message is not None and root.message is None)
            or (subjects[old][1] and not reply)
        ):
            table[subject] = root
    result: list[_Container] = []
    placed: dict[_Container, int] = {}  # a thread of the result -> its index there
    later = {root: index for index, root in enumerate(roots)}
    for root in roots:
        subject, reply = subjects[root]
        target = table.get(subject) if subject else None
        if target is None or target is root:
            placed[root] = len(result)
            result.append(root)
            continue
        if target.message is None and root.message is None:
            for child in root.children:
                child.parent = target
            target.children.extend(root.children)
            root.children = []
        elif target.message is None:
            target.adopt(root)
        elif reply and not subjects[target][1]:
            target.adopt(root)
        else:  # the dummy takes the target's place, in the result or still to come
            dummy = _Container()
            dummy.adopt(target)
            dummy.adopt(root)
            subjects[dummy] = subjects[target]  # a dummy's subject is its first child's
            table[subject] = dummy
            if target in placed:
                result[placed[target]] = dummy
                placed[dummy] = placed.pop(target)
            else:
                roots[later[target]] = dummy
    return result


def ordered_subject(items: list[_Message]) -> list[_Container]:
    """RFC 5256 3 ORDEREDSUBJECT: by base subject, then date; the first of each subject is
    the parent of the others."""
    groups: dict[tuple[str, int], list[_Message]] = {}
    for item in sorted(items, key=lambda i: (_base(i), i.date, i.seq)):
        base = _base(item)
        groups.setdefault((base, item.seq if base == _HIDDEN else 0), []).append(item)
    roots = []
    for members in groups.values():
        root = _Container(members[0])
        for member in members[1:]:
            root.adopt(_Container(member))
        roots.append(root)
    roots.sort(key=_Container.sort_key)
    return roots


def _base(item: _Message) -> str:
    return base_subject(item.fields.headers.first("subject") or "")


def _inner(container: _Container) -> str:
    """A thread's members inside its parentheses: `1 2 3`, `1 (2 4)(3)`, `(1)(2)`: a single
    child follows its parent, several each get parentheses (written without recursion)."""
    out: list[str] = []
    stack: list[_Container | str] = [container]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            out.append(item)
            continue
        children = item.children
        if item.message is not None:
            out.append(str(item.message.number))
            if children:
                out.append(" ")
            if len(children) == 1:
                stack.append(children[0])
                continue
        for child in reversed(children):
            stack.extend((")", child, "("))
    return "".join(out)
