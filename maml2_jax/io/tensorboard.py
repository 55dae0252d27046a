"""TensorBoard event files of a run's scalars, written with TensorBoard's own writer.

Impure. No TensorFlow: ``tensorboard.summary.writer.event_file_writer`` writes the
event protocol buffers directly.
"""

from __future__ import annotations

import numbers
import time


class ScalarWriter:
    """Writes every numeric entry of a metrics row as a scalar at the row's step.

    Lists (per-category values) become one scalar per entry, ``name/0``, ``name/1``…;
    ``None`` (a non-finite value logged as null) and non-numeric entries are skipped.
    """

    def __init__(self, directory: str):
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self._writer = EventFileWriter(directory)

    def write(self, step: int, row: dict, skip: tuple[str, ...] = ("iteration", "labels")) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2

        values = []
        for name, value in row.items():
            if name in skip:
                continue
            items = enumerate(value) if isinstance(value, (list, tuple)) else [(None, value)]
            for index, item in items:
                if isinstance(item, bool) or not isinstance(item, numbers.Real):
                    continue
                tag = name if index is None else f"{name}/{index}"
                values.append(summary_pb2.Summary.Value(tag=tag, simple_value=float(item)))
        if values:
            self._writer.add_event(event_pb2.Event(wall_time=time.time(), step=int(step),
                                                   summary=summary_pb2.Summary(value=values)))

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
