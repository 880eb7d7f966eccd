"""A site of the network's training in a process of its own.

``models.federated.SiteRows`` keeps a site's rows behind its methods, but in one Python
process that is a convention: nothing stops code beside it from reading its arrays.
``SiteProcess`` makes the boundary physical. It starts a process (a fresh interpreter,
``python -m forewarn.models.site_process``, that shares no memory with the coordinator
and talks to it over two pipes) that loads the site's feature matrix into a
``SiteRows`` and answers only the calls that ``train_federated`` makes, each returning
what the module's docstring says may cross: the model's bytes, sums over 11+ rows, label
counts, and the site's feature column names. Any other call is refused there, in the
site's process, with PermissionError. The coordinator's process never holds a row: it
never opens the matrix.

Every answer is kept in ``messages`` (the call, and the size of what came back), the
record of what left the site during training. The same protocol could run over a
network between machines; here it runs over a pipe between processes of one machine.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from multiprocessing.connection import Connection
from pathlib import Path

from forewarn.features.featurize import FeatureMatrix

# What ``train_federated`` (and ``untrainable``) ask a site, and nothing else.
PROPERTIES = ("columns", "can_tune", "can_boost")
METHODS = ("label_counts", "boost", "tuning_logloss", "platt_sums", "brier_sums")
# Errors re-raised as themselves in the coordinator (their messages name no row); any other as RuntimeError.
KNOWN_ERRORS = {"ValueError": ValueError, "PermissionError": PermissionError}


def _serve(calls: Connection, answers: Connection, name: str, matrix_dir: str, threads: int) -> None:
    """The site's process: load the rows, then answer allowed calls until told to stop."""
    from forewarn.models.federated import SiteRows

    try:
        site = SiteRows(name, FeatureMatrix(Path(matrix_dir)), threads)
    except Exception as exc:  # noqa: BLE001 - whatever failed, the coordinator is told and the process ends
        answers.send(("error", type(exc).__name__, str(exc)))
        return
    answers.send(("ok", None))
    while True:
        try:
            message = calls.recv()
        except EOFError:  # the coordinator went away
            return
        if message is None:
            return
        call, args, kwargs = message
        try:
            if call in PROPERTIES:
                result = getattr(site, call)
            elif call in METHODS:
                result = getattr(site, call)(*args, **kwargs)
            else:
                raise PermissionError(f"site {name!r} answers only {', '.join(PROPERTIES + METHODS)}; it refuses "
                                      f"{call!r}")
        except Exception as exc:  # noqa: BLE001 - passed back to the coordinator, which raises it
            answers.send(("error", type(exc).__name__, str(exc)))
            continue
        answers.send(("ok", result))


class SiteProcess:
    """``SiteRows``'s training interface, answered by a process of the site's own (see the
    module's docstring). Use it as a context manager, or ``close()`` it."""

    def __init__(self, name: str, matrix: FeatureMatrix, threads: int = 1):
        self.name = name
        self.messages: list[dict] = []
        self._cached: dict[str, object] = {}
        # two one-way pipes: calls to the site, answers from it
        to_site, site_reads = os.pipe()[::-1]
        site_writes, from_site = os.pipe()[::-1]
        self._process = subprocess.Popen(
            [sys.executable, "-m", "forewarn.models.site_process", str(site_reads), str(site_writes), name,
             str(Path(matrix.dir)), str(threads)], pass_fds=(site_reads, site_writes), stdin=subprocess.DEVNULL)
        os.close(site_reads)
        os.close(site_writes)
        self._send, self._recv = Connection(to_site, readable=False), Connection(from_site, writable=False)
        self._answer("start")

    def _answer(self, call: str):
        try:
            status, *payload = self._recv.recv()
        except EOFError:
            raise RuntimeError(f"site {self.name!r}: its process ended (exit code {self._process.wait(timeout=30)}) "
                               f"while answering {call!r}") from None
        if status == "error":
            kind, message = payload
            if call == "start":
                self._process.wait(timeout=30)
                self._close_pipes()
            raise KNOWN_ERRORS.get(kind, RuntimeError)(message if kind in KNOWN_ERRORS else f"site {self.name!r}: {kind}: "
                                                                                         f"{message}")
        return payload[0]

    def _call(self, call: str, *args, **kwargs):
        if self._process.poll() is not None:
            raise RuntimeError(f"site {self.name!r}: its process is not running (closed, or exit code "
                               f"{self._process.returncode})")
        self._send.send((call, args, kwargs))
        result = self._answer(call)
        self.messages.append({"call": call, "bytes": len(pickle.dumps(result))})
        return result

    def _property(self, call: str):
        if call not in self._cached:  # fixed for the process's life: asked once
            self._cached[call] = self._call(call)
        return self._cached[call]

    @property
    def columns(self):
        return self._property("columns")

    @property
    def can_tune(self) -> bool:
        return bool(self._property("can_tune"))

    @property
    def can_boost(self) -> bool:
        return bool(self._property("can_boost"))

    def label_counts(self):
        return self._call("label_counts")

    def boost(self, model, rounds, params, seed, *, min_cell=11) -> bytes:
        return self._call("boost", model, rounds, params, seed, min_cell=min_cell)

    def tuning_logloss(self, model):
        return self._call("tuning_logloss", model)

    def platt_sums(self, model, a, b, fold=None):
        return self._call("platt_sums", model, a, b, fold)

    def brier_sums(self, model, calibrator, fold=None):
        return self._call("brier_sums", model, calibrator, fold)

    def summary(self) -> dict:
        """What left the site: the number of answers and their bytes, by call."""
        out: dict[str, dict[str, int]] = {}
        for m in self.messages:
            entry = out.setdefault(m["call"], {"answers": 0, "bytes": 0})
            entry["answers"] += 1
            entry["bytes"] += m["bytes"]
        return out

    def close(self) -> None:
        if self._process.poll() is None:
            try:
                self._send.send(None)
            except (BrokenPipeError, OSError):
                pass
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=10)
        self._close_pipes()

    def _close_pipes(self) -> None:
        for conn in (self._send, self._recv):
            if not conn.closed:
                conn.close()

    def __enter__(self) -> SiteProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


if __name__ == "__main__":  # the site's process: python -m forewarn.models.site_process READ_FD WRITE_FD NAME MATRIX THREADS
    reads, writes, site_name, folder, n_threads = sys.argv[1:6]
    _serve(Connection(int(reads), writable=False), Connection(int(writes), readable=False), site_name, folder,
           int(n_threads))
