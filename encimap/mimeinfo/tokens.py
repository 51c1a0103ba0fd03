"""RFC 5322 3.2 tokens of structured header values."""

from __future__ import annotations


class _Tokens:
    """A cursor over a structured header value (RFC 5322 3.2: CFWS, atoms, quoted strings)."""

    def __init__(self, text: str, specials: str = '()<>@,;:\\".[]') -> None:
        self.text = text
        self.pos = 0
        self.specials = specials
        self.last_comment = ""
        self.unterminated = False  # a quoted string ran to the end without its closing quote

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def skip_cfws(self) -> None:
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char in " \t\r\n":
                self.pos += 1
            elif char == "(":
                self.last_comment = self._comment()
            else:
                return

    def _comment(self) -> str:
        depth, out = 0, []
        while self.pos < len(self.text):
            char = self.text[self.pos]
            self.pos += 1
            if char == "\\" and self.pos < len(self.text):
                out.append(self.text[self.pos])
                self.pos += 1
                continue
            if char == "(":
                depth += 1
                if depth == 1:
                    continue
            elif char == ")":
                depth -= 1
                if depth == 0:
                    break
            out.append(char)
        return "".join(out)

    def atom(self, extra: str = "") -> str:
        start = self.pos
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char in " \t\r\n()" or (char in self.specials and char not in extra):
                break
            self.pos += 1
        return self.text[start : self.pos]

    def quoted(self) -> str:
        self.pos += 1  # opening quote
        out = []
        while self.pos < len(self.text):
            char = self.text[self.pos]
            self.pos += 1
            if char == "\\" and self.pos < len(self.text):
                out.append(self.text[self.pos])
                self.pos += 1
            elif char == '"':
                break
            elif char != "\n":  # a bare CR stays (Dovecot keeps it in a parameter)
                out.append(char)
        else:
            self.unterminated = True
        return "".join(out)

    def word(self) -> str | None:
        self.skip_cfws()
        if self.peek() == '"':
            return self.quoted()
        word = self.atom()
        return word or None

    def phrase(self) -> str:
        """RFC 5322 phrase with obs-phrase: words and dots ("Joe Q. Public"), one space between
        words, a dot kept with the word it is written next to (as Dovecot joins them)."""
        words = []
        while True:
            self.skip_cfws()
            if self.peek() == '"':
                words.append(self.quoted())
            else:
                word = self.atom(".")
                if not word:
                    break
                words.append(word)
        return " ".join(words)
