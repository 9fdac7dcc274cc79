"""The main job's corpus: real text that is on every machine without a download.

By default, the docstrings of the installed Python standard library (modules, classes
and functions of every ``.py`` file under ``sysconfig.get_paths()["stdlib"]``, test
suites and ``site-packages`` left out), in sorted path order so every run and every
machine with the same Python sees the same chunks. A directory of ``.txt``/``.md``/
``.rst`` files can be given instead. Text is split into chunks with LangChain's
``RecursiveCharacterTextSplitter``.
"""

from __future__ import annotations

import ast
import os
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Chunk", "directory_chunks", "stdlib_chunks"]

#: Default chunk length in characters (all-MiniLM-L6-v2 reads 256 word pieces).
CHUNK_CHARS = 600
_SKIPPED_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
_TEXT_SUFFIXES = {".txt", ".md", ".rst"}


@dataclass(frozen=True)
class Chunk:
    """One piece of text to embed, and where it came from (``path`` or ``path:qualname``)."""

    text: str
    source: str


def _splitter(chunk_chars: int):  # type: ignore[no-untyped-def]
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    return RecursiveCharacterTextSplitter(chunk_size=chunk_chars, chunk_overlap=0)


def _files(root: Path, suffixes: set[str]) -> Iterator[Path]:
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in _SKIPPED_DIRS)
        for name in sorted(files):
            if Path(name).suffix in suffixes:
                yield Path(directory) / name


def _docstrings(path: Path) -> Iterator[tuple[str, str]]:
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError, OSError):
        return  # lib2to3 fixtures and the like: not Python this interpreter parses
    scopes: list[tuple[ast.AST, str]] = [(tree, "")]
    while scopes:
        node, qualname = scopes.pop(0)
        doc = ast.get_docstring(node, clean=True)  # type: ignore[arg-type]
        if doc:
            yield doc, qualname
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                scopes.append((child, f"{qualname}.{child.name}" if qualname else child.name))


def stdlib_chunks(*, chunk_chars: int = CHUNK_CHARS, root: str | None = None) -> Iterator[Chunk]:
    """Chunks of every docstring in the standard library, in a stable order.

    :param chunk_chars: longest chunk, in characters (default 600).
    :param root: the library directory (default: this interpreter's stdlib).
    """
    base = Path(root or sysconfig.get_paths()["stdlib"])
    splitter = _splitter(chunk_chars)
    for path in _files(base, {".py"}):
        relative = path.relative_to(base).as_posix()
        for doc, qualname in _docstrings(path):
            source = f"{relative}:{qualname}" if qualname else relative
            for text in splitter.split_text(doc):
                yield Chunk(text, source)


def directory_chunks(root: str, *, chunk_chars: int = CHUNK_CHARS) -> Iterator[Chunk]:
    """Chunks of every ``.txt``, ``.md`` and ``.rst`` file under ``root``, in path order.

    :raises FileNotFoundError: ``root`` is not a directory.
    """
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(f"corpus directory {root!r} does not exist")
    splitter = _splitter(chunk_chars)
    for path in _files(base, _TEXT_SUFFIXES):
        text = path.read_text(encoding="utf-8", errors="replace")
        for piece in splitter.split_text(text):
            yield Chunk(piece, path.relative_to(base).as_posix())
