"""Unit tests of daisy_worker.py (stdlib unittest; run from this directory:
``python3 -m unittest test_daisy_worker``). The Rust tests of daisy-worker run it too."""

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import unittest

import daisy_worker
from daisy_worker import Block, BlockStatus, Coordinate, Roi

HERE = os.path.dirname(os.path.abspath(__file__))


class CoordinateTest(unittest.TestCase):
    def test_elementwise_arithmetic(self):
        a = Coordinate(4, 6, 8)
        self.assertEqual(a + 1, (5, 7, 9))
        self.assertEqual(a - (1, 2, 3), (3, 4, 5))
        self.assertEqual(a * 2, (8, 12, 16))
        self.assertEqual(a // (2, 4, 3), (2, 1, 2))
        self.assertEqual(a % 3, (1, 0, 2))
        self.assertEqual(-a, (-4, -6, -8))
        self.assertEqual(Coordinate((1, 2)).dims, 2)
        with self.assertRaises(ValueError):
            a + (1, 2)


class RoiTest(unittest.TestCase):
    def test_attributes(self):
        roi = Roi((1, 2), (3, 4))
        self.assertEqual(roi.offset, (1, 2))
        self.assertEqual(roi.begin, roi.get_begin())
        self.assertEqual(roi.end, (4, 6))
        self.assertEqual(roi.get_end(), (4, 6))
        self.assertEqual(roi.shape, roi.get_shape())
        self.assertEqual(roi.get_offset(), (1, 2))
        self.assertEqual(roi.dims, 2)
        self.assertEqual(roi.size, 12)
        self.assertFalse(roi.empty)
        self.assertTrue(Roi((0, 0), (0, 5)).empty)
        self.assertEqual(roi.to_slices(), (slice(1, 4), slice(2, 6)))
        self.assertEqual(str(roi), "[1:4, 2:6] (3, 4)")
        self.assertEqual(repr(roi), "Roi((1, 2), (3, 4))")

    def test_contains(self):
        roi = Roi((0, 0), (10, 10))
        self.assertTrue(roi.contains(Roi((2, 2), (8, 8))))
        self.assertFalse(roi.contains(Roi((2, 2), (9, 8))))
        self.assertTrue(roi.contains((9, 9)))
        self.assertFalse(roi.contains((10, 0)))
        self.assertTrue(roi.contains(Roi((5, 5), (0, 0))))

    def test_intersect_grow_shift(self):
        a = Roi((0, 0), (10, 10))
        b = Roi((5, -5), (10, 10))
        self.assertEqual(a.intersect(b), Roi((5, 0), (5, 5)))
        self.assertTrue(a.intersects(b))
        disjoint = a.intersect(Roi((20, 20), (1, 1)))
        self.assertTrue(disjoint.empty)
        self.assertEqual(a.grow(2, 3), Roi((-2, -2), (15, 15)))
        self.assertEqual(a.grow((1, 0), None), Roi((-1, 0), (11, 10)))
        self.assertEqual(a.grow(-1, -1), Roi((1, 1), (8, 8)))
        self.assertEqual(a.shift((1, 2)), Roi((1, 2), (10, 10)))
        self.assertEqual(a + (1, 2), a.shift((1, 2)))
        self.assertEqual(a - (1, 2), Roi((-1, -2), (10, 10)))
        self.assertEqual(a.union(b), Roi((0, -5), (15, 15)))
        self.assertEqual(hash(a), hash(Roi((0, 0), (10, 10))))


class BlockTest(unittest.TestCase):
    def test_shaped_like_daisy(self):
        block = Block("t", 7, Roi((0,), (4,)), Roi((1,), (2,)), attempt=2)
        self.assertEqual(block.block_id, ("t", 7))
        self.assertEqual(block.task_id, "t")
        self.assertEqual(block.attempt, 2)
        self.assertEqual(block.status, BlockStatus.PROCESSING)
        self.assertEqual(block, Block("t", 7, Roi((5,), (1,)), Roi((5,), (1,))))
        self.assertEqual(repr(block), "t/7 with read ROI [0:4] (4) and write ROI [1:3] (2)")

    def test_error_tail_keeps_the_end(self):
        text = "\n".join("line %d %s" % (i, "x" * 300) for i in range(100))
        tail = daisy_worker._tail(text)
        self.assertLessEqual(len(tail.encode()), daisy_worker.ERROR_TAIL_BYTES + 3)
        self.assertTrue(tail.endswith("line 99 " + "x" * 300))


def block_line(block_id):
    return json.dumps(
        {
            "task": "t",
            "block_id": block_id,
            "read_roi": {"offset": [0, 0], "shape": [4, 4]},
            "write_roi": {"offset": [1, 1], "shape": [2, 2]},
            "attempt": 1,
        }
    )


class ServeTest(unittest.TestCase):
    """Runs serve() in a child process, as daisy-rs does."""

    def run_worker(self, body, lines, env=None):
        with tempfile.TemporaryDirectory() as tmp:
            script = os.path.join(tmp, "w.py")
            with open(script, "w") as f:
                f.write(textwrap.dedent(body))
            full_env = dict(os.environ, PYTHONPATH=HERE)
            full_env.pop("DAISY_STDOUT_LOG", None)
            full_env.update(env or {})
            done = subprocess.run(
                [sys.executable, script],
                input="".join(line + "\n" for line in lines).encode(),
                capture_output=True,
                env=full_env,
                timeout=20,
            )
            return done, tmp

    def test_replies_only_on_stdout_and_prints_on_stderr(self):
        done, _ = self.run_worker(
            """
            import os, subprocess, sys, daisy_worker
            def process(block):
                print("user print", block.block_id)
                os.write(1, b"fd write\\n")
                subprocess.run(["echo", "child echo"])
                if block.block_id[1] == 2:
                    raise RuntimeError("nope")
            daisy_worker.serve(process)
            """,
            [block_line(1), "", "not json", block_line(2)],
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        replies = [json.loads(line) for line in done.stdout.decode().splitlines()]
        self.assertEqual(replies[0], {"block_id": 1, "status": "success"})
        self.assertEqual(replies[1]["status"], "failed")
        self.assertIn("RuntimeError: nope", replies[1]["error"])
        self.assertEqual(len(replies), 2)
        stderr = done.stderr.decode()
        for expected in ["user print ('t', 1)", "fd write", "child echo", "cannot decode"]:
            self.assertIn(expected, stderr)

    def test_prints_go_to_daisy_stdout_log(self):
        with tempfile.TemporaryDirectory() as logs:
            log = os.path.join(logs, "worker_0.out")
            done, _ = self.run_worker(
                """
                import daisy_worker
                daisy_worker.serve(lambda block: print("to the log"))
                """,
                [block_line(3)],
                env={"DAISY_STDOUT_LOG": log},
            )
            self.assertEqual(done.returncode, 0, done.stderr)
            self.assertEqual(json.loads(done.stdout), {"block_id": 3, "status": "success"})
            with open(log) as f:
                self.assertEqual(f.read(), "to the log\n")

    def test_setup_failure_ends_the_worker(self):
        done, _ = self.run_worker(
            """
            import daisy_worker
            def setup():
                raise ImportError("no model")
            daisy_worker.serve(lambda block: None, setup=setup)
            """,
            [block_line(1)],
        )
        self.assertNotEqual(done.returncode, 0)
        self.assertEqual(done.stdout, b"")
        self.assertIn(b"ImportError: no model", done.stderr)


if __name__ == "__main__":
    unittest.main()
