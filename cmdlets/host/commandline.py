"""Reading a pipeline typed as text: ``Get-Backup -Name 'Daily SQL' | Start-BackupCopy ...``.

Quotes work as in PowerShell: '...' is literal, "..." allows \\" and \\\\; an unquoted comma
makes a list (``-Backup 'Daily SQL',Weekly``); ``|`` outside quotes separates cmdlets.
A quoted word is always a value, never a parameter name.
"""

from __future__ import annotations

from cmdlets.host.errors import UsageError

Token = str | list[str]


def split_pipeline(text: str) -> list[list[Token]]:
    stages: list[list[Token]] = [[]]
    parts: list[str] = []  # the comma-separated pieces of the word being read
    piece: list[str] = []
    in_word = quoted = False
    i = 0

    def end_word() -> None:
        nonlocal in_word, quoted
        if in_word:
            parts.append("".join(piece))
            token: Token = parts[0] if len(parts) == 1 and not quoted else list(parts)
            stages[-1].append(token)
        parts.clear()
        piece.clear()
        in_word = quoted = False

    while i < len(text):
        c = text[i]
        if c in "'\"":
            close = text.find(c, i + 1) if c == "'" else _find_double(text, i + 1)
            if close < 0:
                raise UsageError(f"missing closing {c} in: {text}", error_id="UnterminatedString")
            body = text[i + 1 : close]
            if c == '"':
                body = body.replace('\\"', '"').replace("\\\\", "\\").replace('`"', '"')
            piece.append(body)
            in_word = quoted = True
            i = close + 1
            continue
        if c.isspace():
            end_word()
        elif c == "|":
            end_word()
            if not stages[-1]:
                raise UsageError("empty pipeline element before '|'", error_id="EmptyPipeElement")
            stages.append([])
        elif c == "," and in_word:
            parts.append("".join(piece))
            piece.clear()
        else:
            piece.append(c)
            in_word = True
        i += 1
    end_word()
    if not stages[-1]:
        if len(stages) > 1:
            raise UsageError("empty pipeline element after '|'", error_id="EmptyPipeElement")
        return []
    return stages


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
