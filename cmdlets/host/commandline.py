"""Reading a pipeline typed as text: ``Get-Backup -Name 'Daily SQL' | Start-BackupCopy ...``.

Quotes work as in PowerShell: '...' is literal ('' inside stands for one '), "..." allows \\"
and \\\\; an unquoted comma makes a list (``-Backup 'Daily SQL',Weekly``); ``|`` outside
quotes separates cmdlets. A quoted word is always a value, never a parameter name.

The same reader, told to be lenient, tells the completer what is being typed: the words of
the current pipeline element and the unfinished word under the cursor, even inside an open
quote.
"""

from __future__ import annotations

import dataclasses

from cmdlets.host.errors import UsageError

Token = str | list[str]


@dataclasses.dataclass
class Word:
    """One word as typed: its comma-separated pieces (quotes removed) and where it lies."""

    start: int
    parts: list[str] = dataclasses.field(default_factory=list)
    quoted: bool = False
    # Where the last piece starts (after the last unquoted comma), and where the word ends.
    part_start: int = 0
    end: int = 0
    # The quote character of a quote left open at the end of the text (lenient reading only).
    open_quote: str | None = None

    @property
    def token(self) -> Token:
        return self.parts[0] if len(self.parts) == 1 and not self.quoted else list(self.parts)


def split_pipeline(text: str) -> list[list[Token]]:
    """The pipeline elements of ``text``, each a list of tokens (a token may be a list)."""
    stages = read_words(text)
    if stages == [[]]:
        return []
    return [[word.token for word in stage] for stage in stages]


def read_words(text: str, *, lenient: bool = False) -> list[list[Word]]:
    """The words of each pipeline element. Lenient reading (for completion) accepts an open
    quote and empty elements instead of raising :class:`UsageError`."""
    stages: list[list[Word]] = [[]]
    word: Word | None = None
    piece: list[str] = []

    def end_word(at: int) -> None:
        nonlocal word
        if word is not None:
            word.parts.append("".join(piece))
            word.end = at
            stages[-1].append(word)
        word = None
        piece.clear()

    def current(at: int) -> Word:
        nonlocal word
        if word is None:
            word = Word(start=at, part_start=at)
        return word

    i = 0
    while i < len(text):
        c = text[i]
        if c in "'\"":
            here = current(i)
            close = _find_single(text, i + 1) if c == "'" else _find_double(text, i + 1)
            if close < 0:
                if not lenient:
                    raise UsageError(
                        f"missing closing {c} in: {text}", error_id="UnterminatedString"
                    )
                here.open_quote = c
                close = len(text)
            piece.append(_unquote(c, text[i + 1 : close]))
            here.quoted = True
            i = close + 1
            continue
        if c.isspace():
            end_word(i)
        elif c == "|":
            end_word(i)
            if not stages[-1] and not lenient:
                raise UsageError("empty pipeline element before '|'", error_id="EmptyPipeElement")
            stages.append([])
        elif c == "," and word is not None:
            word.parts.append("".join(piece))
            piece.clear()
            word.part_start = i + 1
        else:
            current(i)
            piece.append(c)
        i += 1
    end_word(len(text))
    if len(stages) > 1 and not stages[-1] and not lenient:
        raise UsageError("empty pipeline element after '|'", error_id="EmptyPipeElement")
    return stages


def _unquote(quote: str, body: str) -> str:
    if quote == "'":
        return body.replace("''", "'")
    return body.replace('\\"', '"').replace("\\\\", "\\").replace('`"', '"')


def _find_single(text: str, start: int) -> int:
    i = start
    while True:
        i = text.find("'", i)
        if i < 0 or text[i + 1 : i + 2] != "'":
            return i
        i += 2  # '' is a quote inside the quotes


def _find_double(text: str, start: int) -> int:
    i = start
    while i < len(text):
        if text[i] in "\\`" and i + 1 < len(text):
            i += 2
            continue
        if text[i] == '"':
            return i
        i += 1
    return -1


def quote_word(value: str, quote: str = "'") -> str:
    """``value`` written so that :func:`split_pipeline` reads it back as one value."""
    if quote == '"':
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return "'" + value.replace("'", "''") + "'"


def needs_quotes(value: str) -> bool:
    return value == "" or any(c.isspace() or c in "'\"|,`$#;(){}@" for c in value)
