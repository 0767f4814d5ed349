"""Serve a Daisy-style ``process(block)`` function to a daisy-rs worker.

A task with ``worker = ["python3", "my_task.py"]`` starts ``my_task.py`` once per
worker slot and sends it one block per line; ``serve`` turns each line into a
``Block`` shaped like Daisy's, calls your function and reports the outcome::

    import daisy_worker

    def setup():                      # optional: runs once per worker process
        global model
        model = load_model()

    def process(block):               # an existing Daisy process function
        out[block.write_roi] = model(raw[block.read_roi])

    if __name__ == "__main__":
        daisy_worker.serve(process, setup=setup)

Importing: this file is stdlib-only. Copy it next to your script (Python puts
the script's directory on ``sys.path``), or put the directory holding it on
``PYTHONPATH`` (``PYTHONPATH=/path/to/daisy-rs/python python3 my_task.py``).

The block: ``block.block_id == (task_id, id)``, ``block.task_id``,
``block.attempt`` (from 1), ``block.status``, and ``block.read_roi`` /
``block.write_roi`` as ``funlib.geometry.Roi`` when funlib is importable, else
the ``Roi`` class below (same attributes and the common methods).

Outcome: returning normally (``None``, ``True``, anything but ``False``) is
success. Returning ``False``, or setting ``block.status`` to FAILED (Daisy's
``BlockStatus.FAILED`` or this module's), is a failure. A raised ``Exception``
is a failure: the traceback goes to stderr (the worker's ``.err`` log) and its
tail (at most 50 lines / 8 KiB) becomes the block's error; the worker keeps
serving. ``SystemExit``/``KeyboardInterrupt`` end the worker (daisy-rs then
reports the block as "process died" and restarts the worker). An exception in
``setup`` ends the worker with its traceback on stderr. At EOF on stdin,
``serve`` returns, so the script exits cleanly.

Why stdout is taken over: stdout is the protocol channel, and user code
(``print``, a C library writing to fd 1, a subprocess inheriting fd 1) must not
be able to corrupt it. ``serve`` therefore first duplicates fds 0 and 1 into
private, non-inheritable descriptors used only for the protocol, then points
fd 1 (and with it ``sys.stdout``) at the worker's ``.out`` log
(``$DAISY_STDOUT_LOG``, or stderr when that is unset, e.g. when run by hand)
and fd 0 at ``/dev/null``. Redirecting the file descriptors, not just
``sys.stdout``, is what also catches C-level writes and child processes; a
separate protocol fd passed by the worker would have needed a daisy-rs-only
launch convention, whereas this works with plain pipes. Run by hand for
debugging: ``echo '<block json>' | python3 my_task.py`` prints the replies.

Protocol: one JSON object per line in,
``{"task": "t", "block_id": 12, "read_roi": {"offset": [..], "shape": [..]},
"write_roi": {..}, "attempt": 1}``, one per line out,
``{"block_id": 12, "status": "success"}`` or
``{"block_id": 12, "status": "failed", "error": "..."}``.
"""

import enum
import json
import os
import sys
import traceback

__all__ = ["serve", "Block", "BlockStatus", "Roi", "Coordinate"]

#: The block's error keeps at most this much of the end of a traceback.
ERROR_TAIL_BYTES = 8 * 1024
ERROR_TAIL_LINES = 50


class Coordinate(tuple):
    """An integer tuple with element-wise arithmetic (a stand-in for funlib's)."""

    def __new__(cls, *values):
        if len(values) == 1 and not isinstance(values[0], (int, float)) and values[0] is not None:
            values = tuple(values[0])
        return super().__new__(cls, values)

    @property
    def dims(self):
        return len(self)

    def _zip(self, other, op):
        if isinstance(other, (int, float)):
            other = (other,) * len(self)
        if len(other) != len(self):
            raise ValueError("dimension mismatch: %r and %r" % (self, other))
        return Coordinate(
            None if a is None or b is None else op(a, b) for a, b in zip(self, other)
        )

    def __add__(self, other):
        return self._zip(other, lambda a, b: a + b)

    __radd__ = __add__

    def __sub__(self, other):
        return self._zip(other, lambda a, b: a - b)

    def __rsub__(self, other):
        return self._zip(other, lambda a, b: b - a)

    def __mul__(self, other):
        return self._zip(other, lambda a, b: a * b)

    __rmul__ = __mul__

    def __floordiv__(self, other):
        return self._zip(other, lambda a, b: a // b)

    def __truediv__(self, other):
        return self._zip(other, lambda a, b: a / b)

    def __mod__(self, other):
        return self._zip(other, lambda a, b: a % b)

    def __neg__(self):
        return Coordinate(None if a is None else -a for a in self)

    def __abs__(self):
        return Coordinate(None if a is None else abs(a) for a in self)

    def __repr__(self):
        return "(" + ", ".join(str(a) for a in self) + ("," if len(self) == 1 else "") + ")"


class Roi:
    """An axis-aligned box given by ``offset`` and ``shape`` (a stand-in for
    ``funlib.geometry.Roi``, used when funlib is not importable)."""

    __slots__ = ("_offset", "_shape")

    def __init__(self, offset, shape):
        offset, shape = Coordinate(offset), Coordinate(shape)
        if len(offset) != len(shape):
            raise ValueError("offset %r and shape %r differ in dimensions" % (offset, shape))
        self._offset = offset
        self._shape = shape

    @property
    def offset(self):
        return self._offset

    begin = offset

    @property
    def shape(self):
        return self._shape

    @property
    def end(self):
        return self._offset + self._shape

    @property
    def dims(self):
        return len(self._shape)

    @property
    def empty(self):
        return any(s is not None and s <= 0 for s in self._shape)

    @property
    def size(self):
        size = 1
        for s in self._shape:
            size *= s
        return size

    def get_offset(self):
        return self.offset

    def get_begin(self):
        return self.begin

    def get_end(self):
        return self.end

    def get_shape(self):
        return self.shape

    def to_slices(self):
        return tuple(slice(b, e) for b, e in zip(self.begin, self.end))

    def contains(self, other):
        """Whether ``other`` (a Roi, or a point given as a sequence) lies inside."""
        if isinstance(other, Roi):
            if other.empty:
                return self.empty or self.contains(other.begin)
            return self.contains(other.begin) and self.contains(other.end - 1)
        other = tuple(other)
        return len(other) == self.dims and all(
            b <= p < e for p, b, e in zip(other, self.begin, self.end)
        )

    def intersects(self, other):
        if self.empty or other.empty:
            return False
        return all(
            max(b1, b2) < min(e1, e2)
            for b1, b2, e1, e2 in zip(self.begin, other.begin, self.end, other.end)
        )

    def intersect(self, other):
        """The overlap; disjoint ROIs give an empty ROI (offset ``None``s, as funlib)."""
        if not self.intersects(other):
            return Roi((None,) * self.dims, (0,) * self.dims)
        begin = Coordinate(max(a, b) for a, b in zip(self.begin, other.begin))
        end = Coordinate(min(a, b) for a, b in zip(self.end, other.end))
        return Roi(begin, end - begin)

    def union(self, other):
        if self.empty:
            return other
        if other.empty:
            return self
        begin = Coordinate(min(a, b) for a, b in zip(self.begin, other.begin))
        end = Coordinate(max(a, b) for a, b in zip(self.end, other.end))
        return Roi(begin, end - begin)

    def grow(self, amount_neg=0, amount_pos=0):
        """Grow by ``amount_neg`` below and ``amount_pos`` above (ints or per axis);
        negative amounts shrink."""
        amount_neg = 0 if amount_neg is None else amount_neg
        amount_pos = 0 if amount_pos is None else amount_pos
        return Roi(self._offset - amount_neg, self._shape + amount_neg + amount_pos)

    def shift(self, by):
        return Roi(self._offset + by, self._shape)

    def __add__(self, by):
        return self.shift(by)

    def __sub__(self, by):
        return self.shift(-Coordinate(by) if not isinstance(by, (int, float)) else -by)

    def __eq__(self, other):
        if not isinstance(other, Roi):
            return NotImplemented
        return self._offset == other._offset and self._shape == other._shape

    def __hash__(self):
        return hash((self._offset, self._shape))

    def __repr__(self):
        return "Roi(%r, %r)" % (self._offset, self._shape)

    def __str__(self):
        if self.empty:
            return "[empty ROI]"
        axes = ", ".join("%s:%s" % (b, e) for b, e in zip(self.begin, self.end))
        return "[%s] (%s)" % (axes, ", ".join(str(s) for s in self._shape))


try:  # Daisy users index funlib arrays with funlib ROIs: hand them the real thing.
    from funlib.geometry import Roi as _RoiType
except ImportError:
    _RoiType = Roi


class BlockStatus(enum.IntEnum):
    """Daisy's block states; set ``block.status = BlockStatus.FAILED`` to fail a block."""

    CREATED = 0
    PROCESSING = 1
    SUCCESS = 2
    FAILED = 3


class Block:
    """One block, shaped like ``daisy.Block``: equality and hashing use ``block_id``."""

    def __init__(self, task_id, block_id, read_roi, write_roi, attempt=1):
        self.task_id = task_id
        self.block_id = (task_id, block_id)
        self.read_roi = read_roi
        self.write_roi = write_roi
        self.attempt = attempt
        self.status = BlockStatus.PROCESSING

    def __eq__(self, other):
        return isinstance(other, Block) and self.block_id == other.block_id

    def __hash__(self):
        return hash(self.block_id)

    def __repr__(self):
        return "%s/%d with read ROI %s and write ROI %s" % (
            self.task_id,
            self.block_id[1],
            self.read_roi,
            self.write_roi,
        )


def serve(process_fn, setup=None):
    """Process blocks from stdin with ``process_fn(block)`` until EOF.

    ``setup()``, if given, runs once before the first block (after stdout was
    redirected, so its prints land in the log too).
    """
    global _serving
    if _serving:
        raise RuntimeError("daisy_worker.serve() is already running in this process")
    _serving = True
    protocol_in, protocol_out_fd = _take_over_stdio()
    if setup is not None:
        setup()
    for raw in protocol_in:
        raw = raw.strip()
        if not raw:
            continue
        reply = _handle_line(raw, process_fn)
        if reply is not None:
            _write_reply(protocol_out_fd, reply)


_serving = False


def _take_over_stdio():
    """Moves the protocol to private fds and points fds 0/1 somewhere harmless."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, ValueError, OSError):
            pass
    # os.dup makes non-inheritable fds: subprocesses of user code never see the protocol.
    protocol_out_fd = os.dup(1)
    protocol_in_fd = os.dup(0)
    target = None
    log_path = os.environ.get("DAISY_STDOUT_LOG")
    if log_path:
        try:
            target = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as err:
            sys.stderr.write("daisy_worker: cannot open %s (%s); prints go to stderr\n" % (log_path, err))
    if target is None:
        os.dup2(2, 1)
    else:
        os.dup2(target, 1)
        os.close(target)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    # sys.stdout still wraps fd 1, which is now the log: flush every line so prints show
    # up promptly and survive a kill.
    try:
        sys.stdout.reconfigure(line_buffering=True)
    except (AttributeError, ValueError):
        pass
    return os.fdopen(protocol_in_fd, "rb"), protocol_out_fd


def _write_reply(fd, reply):
    data = (json.dumps(reply) + "\n").encode("utf-8")
    while data:
        written = os.write(fd, data)
        data = data[written:]


def _roi(value):
    return _RoiType(tuple(value["offset"]), tuple(value["shape"]))


def _block_from_message(message):
    return Block(
        task_id=message["task"],
        block_id=message["block_id"],
        read_roi=_roi(message["read_roi"]),
        write_roi=_roi(message["write_roi"]),
        attempt=message.get("attempt", 1),
    )


def _tail(text):
    lines = text.rstrip("\n").splitlines()[-ERROR_TAIL_LINES:]
    tail = "\n".join(lines)
    encoded = tail.encode("utf-8", "replace")
    if len(encoded) > ERROR_TAIL_BYTES:
        tail = "..." + encoded[-ERROR_TAIL_BYTES:].decode("utf-8", "replace")
    return tail


def _is_failed_status(status):
    return getattr(status, "name", None) == "FAILED" or (
        isinstance(status, int) and status == BlockStatus.FAILED
    )


def _failed(block_id, error):
    return {"block_id": block_id, "status": "failed", "error": error}


def _handle_line(raw, process_fn):
    """Runs one protocol line; returns the reply, or None when no block id is known."""
    message = None
    try:
        message = json.loads(raw)
        block = _block_from_message(message)
    except Exception:
        error = "daisy_worker: cannot decode block line %r:\n%s" % (
            raw[:200],
            traceback.format_exc(),
        )
        sys.stderr.write(error)
        sys.stderr.flush()
        block_id = message.get("block_id") if isinstance(message, dict) else None
        return _failed(block_id, _tail(error)) if isinstance(block_id, int) else None
    block_id = block.block_id[1]
    try:
        result = process_fn(block)
    except Exception:
        trace = traceback.format_exc()
        sys.stderr.write("block %s/%s failed:\n%s" % (block.task_id, block_id, trace))
        sys.stderr.flush()
        return _failed(block_id, _tail(trace))
    finally:
        try:
            sys.stdout.flush()
        except (AttributeError, ValueError, OSError):
            pass
    if result is False:
        return _failed(block_id, "process function returned False")
    if _is_failed_status(block.status):
        return _failed(block_id, "process function set block.status to FAILED")
    return {"block_id": block_id, "status": "success"}
