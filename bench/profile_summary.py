"""Summarise a py-spy ``--format raw`` profile (collapsed stacks) of Caducée's server.

    .venv/bin/python bench/profile_summary.py PROFILE.txt [--top 25]

Prints where the samples went three ways: by what the innermost frame was doing (argon2, TLS,
SQLite, SQLAlchemy, the event loop, our own code...), by the innermost frame in our code
(``mailserver.*`` module and function, i.e. who asked for that work), and by our module inclusive
(a sample counts for every module of ours on its stack). py-spy samples every thread (the event
loop, the argon2 and SQLite worker threads) and skips idle ones unless ``--idle`` was given.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]+)(?::\d+)?\)$")

# The innermost frame's file or function → what the process was doing. First match wins.
KINDS = [
    ("argon2 (password hashing)", ("argon2",)),
    ("TLS (ssl)", ("ssl.py", "sslproto.py", "_ssl")),
    ("SQLite (sqlite3/aiosqlite)", ("sqlite3", "aiosqlite")),
    ("SQLAlchemy", ("sqlalchemy",)),
    ("asyncpg", ("asyncpg",)),
    ("event loop / selectors", ("asyncio/", "selectors.py")),
    ("threads (queues, locks)", ("threading.py", "queue.py", "concurrent/futures")),
    ("email parsing", ("email/",)),
]


def parse(path: Path) -> list[tuple[list[tuple[str, str]], int]]:
    """(stack outermost first as (function, file) pairs, sample count) per line of the profile."""
    stacks = []
    for line in path.read_text(errors="replace").splitlines():
        text, _, count = line.rpartition(" ")
        if not text or not count.isdigit():
            continue
        frames = []
        for raw in text.split(";"):
            m = FRAME.match(raw.strip())
            frames.append((m["func"], m["file"]) if m else (raw.strip(), ""))
        stacks.append((frames, int(count)))
    return stacks


def module_of(file: str) -> str | None:
    """``mailserver.imap.session`` for a file of ours, else None."""
    idx = file.find("mailserver/")
    if idx < 0:
        return None
    return file[idx:].removesuffix(".py").replace("/", ".")


def kind_of(frames: list[tuple[str, str]]) -> str:
    func, file = frames[-1]
    for kind, needles in KINDS:
        if any(n in file or n in func for n in needles):
            return kind
    if module_of(file):
        return "our code (mailserver/)"
    return f"other: {Path(file).name or func}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    stacks = parse(args.profile)
    total = sum(c for _, c in stacks) or 1
    kinds: Counter[str] = Counter()
    innermost: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for frames, count in stacks:
        kinds[kind_of(frames)] += count
        ours = [(module_of(f), fn) for fn, f in frames if module_of(f)]
        innermost[f"{ours[-1][0]}.{ours[-1][1]}" if ours else "(no frame of ours)"] += count
        for module in {m for m, _ in ours}:
            inclusive[module] += count

    def table(title: str, counter: Counter[str]) -> None:
        print(f"\n{title}")
        for name, count in counter.most_common(args.top):
            print(f"  {count / total * 100:5.1f} %  {name}")

    print(f"{total} samples in {args.profile}")
    table("by what the innermost frame does:", kinds)
    table("by the innermost frame of ours (who asked for it):", innermost)
    table("by module of ours, inclusive:", inclusive)


if __name__ == "__main__":
    main()
