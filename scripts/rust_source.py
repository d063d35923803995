"""Rust source as the scripts in this directory read it: comments and literals blanked out.

Not a parser: enough to find paths, `fn` items and their braces without being fooled by a `{`
or `crate::` inside a string, a char literal or a comment. Line numbers are kept.
"""
import re

RAW_STRING = re.compile(r'b?r(#*)"')
CHAR = re.compile(r"b?'(\\u\{[0-9A-Fa-f]+\}|\\x[0-9A-Fa-f]{2}|\\.|[^\\'\n])'")


def _ident_char(c):
    return c.isalnum() or c == "_"


def strip_comments_and_strings(text):
    """Blank out comments, string and char literals, keeping newlines (so line numbers hold)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        starts_token = i == 0 or not _ident_char(text[i - 1])
        raw = RAW_STRING.match(text, i) if c in "br" and starts_token else None
        char = CHAR.match(text, i) if c in "b'" and (c == "'" or starts_token) else None
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append("\n" * text.count("\n", i, j))
            i = j
        elif raw:
            close = '"' + raw.group(1)
            end = text.find(close, raw.end())
            end = n if end < 0 else end + len(close)
            out.append('""' + "\n" * text.count("\n", i, end))
            i = end
        elif char:
            # A char literal ('a', '\n', '\u{..}'); a lifetime ('a) does not match and stays.
            out.append("' '")
            i = char.end()
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j + 1
        else:
            out.append(c)
            i += 1
    return "".join(out)
