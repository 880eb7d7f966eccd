"""A site of the network's training in a process of its own.

``models.federated.SiteRows`` keeps a site's rows behind its methods, but in one Python
process that is a convention: nothing stops code beside it from reading its arrays.
``SiteProcess`` makes the boundary physical for the training. It starts a process (a
fresh interpreter, ``python -P -m forewarn.models.site_process``, that shares no memory
with the coordinator and talks to it over two pipes) that loads the site's feature
matrix into a ``SiteRows`` and answers only the calls that ``train_federated`` makes,
each returning what the federated module's docstring says may cross: the model's bytes,
sums over 11+ rows, label counts, and the site's feature column names. Any other call is
refused there, in the site's process, with PermissionError. The coordinator
(``train_federated``) holds no row and no reference to one.

Every answer is kept in ``messages`` (the call, and the size of what came back), the
record of what left the site during training. Calls and answers cross in
``models.wire``'s plain encoding (a JSON header and raw bytes; never a pickle), so
neither side's decoding can run code the other sent: what a transport between machines
would need too.

The flow asks the same processes whether any site can train at all
(``models.federated.untrainable``: the column names, and whether each site can boost and
tune) before the training, so the coordinator reads no site's rows for either. What the
flow still does in one process: it runs every site's own stages (pull, labels, features,
evaluation) on this machine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import traceback
from multiprocessing.connection import Connection
from pathlib import Path

from forewarn.features.featurize import FeatureMatrix
from forewarn.models import wire

# What ``train_federated`` (and ``untrainable``) ask a site, and nothing else.
PROPERTIES = ("columns", "can_tune", "can_boost")
METHODS = ("label_counts", "boost", "tuning_logloss", "platt_sums", "brier_sums")
# Errors whose messages are Forewarn's own (site names, calls, counts of 11 or more): re-raised
# as themselves in the coordinator. Any other error's message stays in the site's log
# (its stderr): only its kind crosses.
KNOWN_ERRORS = {"ValueError": ValueError, "PermissionError": PermissionError}


def _serve(calls: Connection, answers: Connection, name: str, matrix_dir: str, threads: int) -> None:
    """The site's process: load the rows, then answer allowed calls until told to stop."""
    from forewarn.models.federated import MIN_ROWS, SiteRows

    def answer(*message) -> bool:
        try:
            data = wire.encode(list(message))
        except Exception as exc:  # noqa: BLE001 - an answer the encoding refuses is not sent; its kind is
            data = wire.encode(list(failed(exc)))
        try:
            answers.send_bytes(data)
            return True
        except (BrokenPipeError, OSError):  # the coordinator went away: nobody to answer
            return False

    def failed(exc: Exception) -> tuple:
        kind = type(exc).__name__
        if kind in KNOWN_ERRORS:
            return ("error", kind, str(exc))
        traceback.print_exc(file=sys.stderr)
        return ("error", kind, "see the site's log")

    try:
        site = SiteRows(name, FeatureMatrix(Path(matrix_dir)), threads)
    except Exception as exc:  # noqa: BLE001 - whatever failed, the coordinator is told and the process ends
        answer(*failed(exc))
        return
    if not answer("ok", None):
        return
    while True:
        try:
            data = calls.recv_bytes()
        except (EOFError, OSError):  # the coordinator went away
            return
        try:
            message = wire.decode(data)
            if message is None:
                return
            if not (isinstance(message, list) and len(message) == 3 and isinstance(message[0], str)
                    and isinstance(message[1], list) and isinstance(message[2], dict)):
                raise ValueError(f"site {name!r}: a call is [name, arguments, keyword arguments]; got "
                                 f"{type(message).__name__}.")
            call, args, kwargs = message
            if call == "boost" and kwargs.get("min_cell", MIN_ROWS) < MIN_ROWS:
                # The site releases trees under the rule of 11 whatever the coordinator asks.
                raise PermissionError(f"site {name!r} releases trees only with every leaf holding 0 or at least "
                                      f"{MIN_ROWS} train subjects with the outcome and without; it refuses min_cell="
                                      f"{kwargs['min_cell']!r}")
            if call in PROPERTIES:
                result = ("ok", getattr(site, call))
            elif call in METHODS:
                result = ("ok", getattr(site, call)(*args, **kwargs))
            else:
                raise PermissionError(f"site {name!r} answers only {', '.join(PROPERTIES + METHODS)}; it refuses "
                                      f"{call!r}")
        except Exception as exc:  # noqa: BLE001 - passed back to the coordinator, which raises it
            result = failed(exc)
        if not answer(*result):
            return


class SiteProcess:
    """``SiteRows``'s training interface, answered by a process of the site's own (see the
    module's docstring). Use it as a context manager, or ``close()`` it. With
    ``wait=False`` the process starts loading and ``ready()`` waits for it, so that several
    sites load at once."""

    def __init__(self, name: str, matrix: FeatureMatrix, threads: int = 1, *, wait: bool = True):
        self.name = name
        self.messages: list[dict] = []
        self._cached: dict[str, object] = {}
        self._pending: str | None = None  # a call sent and not yet answered
        self._ready = False
        # two one-way pipes: calls to the site, answers from it
        site_reads, to_site = os.pipe()
        from_site, site_writes = os.pipe()
        try:
            # -P: the child imports forewarn from the install, not from a checkout in the working folder
            self._process = subprocess.Popen(
                [sys.executable, "-P", "-m", "forewarn.models.site_process", str(site_reads), str(site_writes), name,
                 str(Path(matrix.dir)), str(threads)], pass_fds=(site_reads, site_writes), stdin=subprocess.DEVNULL)
        except BaseException:
            for fd in (site_reads, to_site, from_site, site_writes):
                os.close(fd)
            raise
        finally:
            if hasattr(self, "_process"):
                os.close(site_reads)
                os.close(site_writes)
        self._send, self._recv = Connection(to_site, readable=False), Connection(from_site, writable=False)
        if wait:
            self.ready()

    def ready(self) -> SiteProcess:
        """Wait until the site has loaded its rows (raises what loading raised)."""
        if not self._ready:
            try:
                self._pending = "start"
                self._answer("start")
                self._ready = True
            except BaseException:
                self._kill()
                raise
        return self

    def _answer(self, call: str):
        try:
            data = self._recv.recv_bytes()
        except (EOFError, OSError):
            raise RuntimeError(f"site {self.name!r}: its process ended (exit code {self._process.wait(timeout=30)}) "
                               f"while answering {call!r}") from None
        self._pending = None
        try:
            message = wire.decode(data)
        except ValueError as exc:
            raise RuntimeError(f"site {self.name!r}: its answer to {call!r} is not a Forewarn wire message ({exc})") \
                from None
        if not (isinstance(message, list) and message and isinstance(message[0], str)
                and (message[0] == "ok" and len(message) == 2
                     or message[0] == "error" and len(message) == 3 and all(isinstance(x, str) for x in message[1:]))):
            raise RuntimeError(f"site {self.name!r}: its answer to {call!r} is neither ['ok', value] nor ['error', kind, "
                               "message'] (strings)")
        status, *payload = message
        if call != "start":
            self.messages.append({"call": call, "bytes": len(data)})
        if status == "error":
            kind, message = payload
            if kind in KNOWN_ERRORS:
                raise KNOWN_ERRORS[kind](message)
            raise RuntimeError(f"site {self.name!r}: {kind} while answering {call!r} ({message})")
        return payload[0]

    def _call(self, call: str, *args, **kwargs):
        self.ready()
        if self._process.poll() is not None:
            raise RuntimeError(f"site {self.name!r}: its process is not running (closed, or exit code "
                               f"{self._process.returncode})")
        data = wire.encode([call, list(args), kwargs])  # refused here, before anything is sent
        self._pending = call
        self._send.send_bytes(data)
        return self._answer(call)

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

    def brier_sums(self, model, calibrator, fold=None, reference=None):
        return self._call("brier_sums", model, calibrator, fold, reference)

    def summary(self) -> dict:
        """What left the site: the number of answers and their bytes, by call."""
        out: dict[str, dict[str, int]] = {}
        for m in self.messages:
            entry = out.setdefault(m["call"], {"answers": 0, "bytes": 0})
            entry["answers"] += 1
            entry["bytes"] += m["bytes"]
        return out

    def _kill(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait(timeout=30)
        self._close_pipes()

    def close(self) -> None:
        """Stop the site's process: asked to, or killed when a call is still in flight (its
        answer may be blocking on a full pipe nobody reads any more)."""
        if self._pending is not None:
            self._kill()
            return
        if self._process.poll() is None:
            try:
                self._send.send_bytes(wire.encode(None))
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
    # Ctrl-C reaches the whole process group: the coordinator stops the site, not the signal.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    reads, writes, site_name, folder, n_threads = sys.argv[1:6]
    _serve(Connection(int(reads), writable=False), Connection(int(writes), readable=False), site_name, folder,
           int(n_threads))
