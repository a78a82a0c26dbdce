"""Producing items ahead of their consumer on a background thread (batches, rows of a stream)."""

from __future__ import annotations

import queue
import threading
from typing import Iterator


def in_background(items: Iterator, prefetch: int = 2) -> Iterator:
  """Runs `items` on a daemon thread, `prefetch` ahead; its errors surface in the consumer."""
  q: queue.Queue = queue.Queue(maxsize=prefetch)
  stop = threading.Event()
  done = object()

  def produce():
    try:
      for item in items:
        while not stop.is_set():
          try:
            q.put(item, timeout=0.1)
            break
          except queue.Full:
            continue
        if stop.is_set():
          return
      q.put(done)
    except BaseException as e:  # surface errors on the consumer side
      q.put(e)

  thread = threading.Thread(target=produce, daemon=True)
  thread.start()
  try:
    while True:
      item = q.get()
      if item is done:
        return
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    stop.set()
