"""Record what a terminal shows while a command runs: its progress bars included, as a person would see them.

Runs the command in a pseudo-terminal (so Rich draws its bars) of ``--columns`` columns and writes two files:
OUT.ansi, the raw output (``cat`` it in a terminal to replay the colours), and OUT.txt, every frame as plain text
(a bar redraws itself after a carriage return; each redraw becomes a line, repeated lines dropped).

    .venv/bin/python scripts/record_terminal.py --out docs/recordings/demo-quick -- .venv/bin/sam-engine demo --quick
"""

from __future__ import annotations

import argparse
import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path


def record(command: list[str], columns: int = 150, rows: int = 50) -> tuple[bytes, int]:
    """(everything the command wrote to its terminal, its exit code)."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    env = {**os.environ, "COLUMNS": str(columns), "LINES": str(rows), "TERM": os.environ.get("TERM", "xterm")}
    process = subprocess.Popen(command, stdin=follower, stdout=follower, stderr=follower, env=env)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the command closed its terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    return b"".join(chunks), process.wait()


def frames(raw: bytes) -> list[str]:
    """Every line and every redraw of a line, as plain text, without consecutive repeats."""
    from rich.text import Text

    out: list[str] = []
    for line in raw.decode("utf-8", "replace").replace("\r\n", "\n").split("\n"):
        for frame in line.split("\r"):
            plain = Text.from_ansi(frame).plain.rstrip()
            if plain and (not out or out[-1] != plain):
                out.append(plain)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="OUT: writes OUT.ansi and OUT.txt")
    parser.add_argument("--columns", type=int, default=150)
    parser.add_argument("command", nargs="+", help="the command, after --")
    args = parser.parse_args(argv)
    started = time.monotonic()
    raw, code = record(args.command, args.columns)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".ansi").write_bytes(raw)
    header = f"$ {' '.join(args.command)}\n# exit code {code}, {time.monotonic() - started:.0f} s\n"
    args.out.with_suffix(".txt").write_text(header + "\n".join(frames(raw)) + "\n")
    print(f"recorded {len(raw)} bytes, exit code {code}: {args.out}.ansi, {args.out}.txt", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
