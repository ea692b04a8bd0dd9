"""Text that did not come from our own code, made safe to show.

File names, step names, provider error text and model output may carry Rich markup (``[/``,
``[bold]``) or terminal control sequences (ANSI CSI, OSC title changes and links, a screen
clear). Before such text reaches the terminal it goes through :func:`clean` (for ``Text``
objects and plain writes) or :func:`markup` (for strings that Rich parses as markup). Records
keep the raw text; only what is shown is cleaned.

One kind of text no record, log or response can keep at all: a lone surrogate (:data:`LONE_SURROGATE`),
which is how Python holds a byte that was not UTF-8 (in a file name, a command-line argument)
or a ``"\ud800"`` escape from JSON. It is not Unicode, so UTF-8 cannot encode it.
"""

from __future__ import annotations

import re

# C0 controls except tab and newline, DEL, and the C1 controls (0x80-0x9f: 0x9b is a one-byte CSI).
# Removing ESC alone leaves the printable rest of a sequence ("]0;PWNED"), harmless but noisy, so
# whole escape sequences go first: CSI (ESC [ ... final byte), OSC/DCS/APC/PM strings (ESC ] ...
# terminated by BEL or ESC \), and two-byte escapes.
_SEQUENCES = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"  # CSI
    r"|\x1b[\]PX^_][^\x07\x1b]*(?:\x07|\x1b\\)?"  # OSC, DCS, SOS, PM, APC strings
    r"|\x1b[ -~]"  # any other two-byte escape (ESC c resets the terminal)
    r"|\x9b[0-?]*[ -/]*[@-~]"  # 8-bit CSI
)
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def valid_text(text: str) -> str:
    """``text`` with every lone surrogate replaced by U+FFFD, so UTF-8 can hold it."""
    return text if text.isascii() or not LONE_SURROGATE.search(text) else LONE_SURROGATE.sub("\ufffd", text)


def clean(text: object) -> str:
    """``text`` as a string without terminal control characters (newline and tab kept)."""
    s = text if isinstance(text, str) else str(text)
    if s.isprintable():  # the common case: nothing to strip (newline and tab are not printable)
        return s
    return _CONTROLS.sub("", _SEQUENCES.sub("", s))


def markup(text: object) -> str:
    """``text`` cleaned and escaped, to put inside a Rich markup string."""
    from rich.markup import escape

    return escape(clean(text))
