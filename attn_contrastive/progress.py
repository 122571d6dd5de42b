"""What a person watching a run sees: one progress bar per long piece of work.

Training steps, feature extraction, robustness conditions, label shards and
the study's stages each get one bar (tqdm's), drawn in place only when
stdout is a terminal. When it is not (a file, a pipe, SLURM's or a TPU VM's
log), the same bar is written as whole lines, one every
:data:`PLAIN_EVERY_S` seconds and one when it ends, so a log file holds a
readable record instead of carriage-return redraws. Lines that stay (a
finished stage and its key number) go through :func:`say`, which keeps the
bars below them intact. Only process 0 draws: every process runs the same
work, and a pod's log should show it once.
"""
from __future__ import annotations

import os
import sys
import time
from typing import TextIO

from tqdm import tqdm

#: Seconds between the plain lines of a bar when stdout is not a terminal.
PLAIN_EVERY_S = 60.0
#: Seconds between redraws of a bar on a terminal.
TERMINAL_EVERY_S = 0.5
#: The columns and lines of a terminal that does not say its own size.
SIZE = (100, 24)



class _Lines:
  """A stream that writes tqdm's redraws (``"\\r" + text``) as whole lines, at most one
  every :data:`PLAIN_EVERY_S` seconds: a bar shorter than that writes nothing (its
  stage's line says it ended), a longer one a line now and then and its last state."""

  def __init__(self, stream: TextIO):
    self.stream = stream
    self.start = self.last = time.monotonic()

  def write(self, text: str) -> None:
    parts = [p.strip() for p in text.replace("\n", "\r").split("\r")]
    parts = [p for p in parts if p]
    if parts and time.monotonic() - self.last >= PLAIN_EVERY_S:
      self.stream.write(parts[-1] + "\n")
      self.last = time.monotonic()

  def flush(self) -> None:
    self.stream.flush()


class _Bar(tqdm):
  """tqdm without its monitor thread (a bar is redrawn from the loop that updates it),
  whose plain lines (``lines``, off a terminal) end with its last state if it ran long
  enough to have written any."""
  monitor_interval = 0
  lines: _Lines | None = None

  def close(self) -> None:
    if self.lines is not None and time.monotonic() - self.lines.start >= PLAIN_EVERY_S:
      self.lines.last = float("-inf")
    super().close()

def on_terminal(stream: TextIO | None = None) -> bool:
  """Whether ``stream`` (stdout) is a terminal that can redraw a bar in place."""
  stream = sys.stdout if stream is None else stream
  isatty = getattr(stream, "isatty", None)
  return bool(isatty and isatty()) and os.environ.get("TERM") != "dumb"


def _unsized(stream: TextIO) -> bool:
  """Whether a terminal reports no size (a new pseudo-terminal): tqdm would draw nothing."""
  try:
    size = os.get_terminal_size(stream.fileno())
  except (AttributeError, OSError, ValueError):
    return True
  return size.columns <= 0 or size.lines <= 0


def _is_lead_process() -> bool:
  jax = sys.modules.get("jax")  # progress never starts JAX itself
  return jax is None or jax.process_index() == 0


def bar(total: int | None, what: str, *, unit: str = "it", initial: int = 0,
        bar_format: str | None = None) -> tqdm:
  """A bar of ``total`` ``unit`` named ``what``; use it as a context manager (or close it).

  ``initial``: the work already done (a resumed run's steps). On a terminal
  the bar disappears when it closes (a finished stage leaves one line through
  :func:`say` instead); off a terminal it writes plain lines (:class:`_Lines`).
  """
  terminal = on_terminal()
  lines = None if terminal else _Lines(sys.stdout)
  made = _Bar(total=total, desc=what, unit=unit, initial=initial, bar_format=bar_format,
              file=lines or sys.stdout,
              position=None if terminal else 0,  # no cursor moves in a file
              leave=not terminal, ascii=not terminal,
              **(dict(ncols=SIZE[0], nrows=SIZE[1]) if terminal and _unsized(sys.stdout)
                 else dict(dynamic_ncols=terminal)),
              mininterval=TERMINAL_EVERY_S if terminal else PLAIN_EVERY_S,
              disable=not _is_lead_process())
  made.lines = lines
  return made


def say(line: str) -> None:
  """One line on stdout that stays, written above any bar being drawn."""
  if _is_lead_process():
    tqdm.write(line, file=sys.stdout)
    sys.stdout.flush()
