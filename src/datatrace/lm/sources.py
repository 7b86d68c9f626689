"""Real text corpora available offline from Debian packages, and the error raised when an optional piece is missing.

- :func:`load_fortunes`: the ``fortunes`` package, about 15k short documents in 43 topic files under
  ``/usr/share/games/fortunes`` (documents separated by ``%`` lines).
- :func:`load_kjv`: the ``bible-kjv`` package, 31,102 verses of the King James Version, dumped by its ``bible``
  command.
"""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
from pathlib import Path

from ..errors import DatatraceError

FORTUNES_DIR = Path("/usr/share/games/fortunes")
_VERSE = re.compile(r"^(\S+:\d+) (.*)$")


class MissingDependencyError(DatatraceError, ImportError):
    """An optional Python package or system package that this feature needs is not installed."""


def require(module: str, extra: str = "llm"):
    """Import ``module`` or raise :class:`MissingDependencyError` naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependencyError(
            f"This needs the Python package {module!r}: pip install 'datatrace[{extra}]'."
        ) from e


def load_fortunes(
    directory: str | Path = FORTUNES_DIR, min_chars: int = 0, exclude: tuple[str, ...] = ("ascii-art",)
) -> tuple[list[str], list[str]]:
    """Documents of the Debian ``fortunes`` package.

    Args:
        directory: where the fortune files are.
        min_chars: drop documents shorter than this many characters.
        exclude: topic files to skip (``ascii-art`` is pictures, not text).

    Returns:
        ``(texts, ids)`` in file-name then file order; ids are ``"{topic}:{k}"`` (k-th document of the topic file,
        counted before filtering, so ids do not move with ``min_chars``). ``.dat`` index files and the ``.u8``
        symlinks are skipped.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise MissingDependencyError(
            f"No fortunes at {directory}: install the Debian package 'fortunes' (apt-get install fortunes)."
        )
    texts, ids = [], []
    for path in sorted(directory.iterdir()):
        if path.suffix == ".dat" or path.is_symlink() or not path.is_file() or path.name in exclude:
            continue
        raw = path.read_text(encoding="utf-8", errors="replace")
        docs = [d.strip("\n") for d in re.split(r"^%\s*$", raw, flags=re.MULTILINE)]
        for k, doc in enumerate(d for d in docs if d.strip()):
            if len(doc) >= min_chars:
                texts.append(doc)
                ids.append(f"{path.name}:{k}")
    if not texts:
        raise MissingDependencyError(f"No fortune documents found in {directory}; is the 'fortunes' package intact?")
    return texts, ids


def load_kjv(verses: str = "gen1:1-rev22:21") -> tuple[list[str], list[str]]:
    """Verses of the King James Bible from the Debian ``bible-kjv`` package.

    Args:
        verses: a ``bible`` verse specification (default: the whole Bible).

    Returns:
        ``(texts, ids)``: one verse per document, ids like ``"Ge1:1"``.
    """
    exe = shutil.which("bible")
    if exe is None:
        raise MissingDependencyError(
            "The 'bible' command is missing: install the Debian package 'bible-kjv' (apt-get install bible-kjv)."
        )
    out = subprocess.run([exe, "-f", verses], capture_output=True, text=True, check=False)
    matches = [_VERSE.match(line) for line in out.stdout.splitlines()]
    pairs = [(m.group(2), m.group(1)) for m in matches if m]
    if out.returncode != 0 or not pairs:
        raise DatatraceError(f"bible -f {verses!r} failed (exit {out.returncode}): {out.stderr.strip()[:300]}")
    return [t for t, _ in pairs], [i for _, i in pairs]
