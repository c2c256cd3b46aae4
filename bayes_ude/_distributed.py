"""Several processes (several hosts, or one process per GPU): ``jax.distributed``.

Every process runs the same program on the same data (each reads the whole table) and
JAX's runtime splits the work: under :func:`initialize`, ``jax.devices()`` lists the
devices of *every* process, :func:`bayes_ude._batching.resolve_devices` then puts the
devices of every process in the mesh, and each process computes the subjects its own
devices hold; sums over subjects are the only communication (one all-reduce per
objective and gradient). Results are replicated on every process; only process 0
(:func:`is_main_process`) writes them.

Where the run is described, in this order of precedence:

* the arguments of :func:`initialize` (the command's ``--coordinator``,
  ``--num-processes``, ``--process-id``);
* the environment variables ``JAX_COORDINATOR_ADDRESS`` (``HOST:PORT`` of process 0),
  ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``;
* with ``cluster=True`` (the command's ``--distributed``), JAX's own detection of a
  cluster launcher: SLURM (``srun``), Open MPI (``mpirun``), Kubernetes, Cloud TPU.

None of them given: one process, and :func:`initialize` does nothing.

A coordinator that cannot be reached is a clear error within ``timeout`` seconds, not a
hang. JAX itself would wait ``initialization_timeout`` and then abort the interpreter
from C++ (``SIGABRT``, a stack dump, measured 6 s after the timeout), which no ``try``
can catch. So: a process other than 0 first checks that the coordinator's port accepts
TCP connections, retrying until ``timeout`` (the processes may start in any order), and
raises :class:`DistributedError` if it never does; process 0 checks that it can bind the
port. The registration that follows (every process must join) is watched by a thread
that, ``timeout`` seconds after the start, prints what to check and ends the process
with exit status 1 (a process that cannot be unblocked has no other way out).
"""

from __future__ import annotations

import atexit
import errno
import io
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

__all__ = ["DistributedError", "command_settings", "initialize", "is_main_process",
           "settings", "start_command"]

#: Seconds every process has to find the coordinator and register with it. Generous:
#: the processes of a job may start tens of seconds apart (importing JAX alone takes
#: 1-2 s, a busy shared file system much longer); JAX's own default is 300 s.
DEFAULT_TIMEOUT = 120.0
#: JAX's own registration deadline is set this much later than ours, so that our watchdog
#: (a clear message, exit status 1) always acts before JAX's abort.
_JAX_GRACE_S = 30
#: Exit status of a process whose registration timed out.
EXIT_TIMEOUT = 1

ENV_ADDRESS = "JAX_COORDINATOR_ADDRESS"
ENV_COUNT = "JAX_NUM_PROCESSES"
ENV_ID = "JAX_PROCESS_ID"


class DistributedError(RuntimeError):
    """The distributed run could not start (bad settings, coordinator not reachable)."""


def _backend_started() -> bool:
    bridge = sys.modules.get("jax._src.xla_bridge")
    return bool(getattr(bridge, "_backends", None))


def _from_env(name: str, value):
    if value is not None:
        return value
    text = os.environ.get(name, "").strip()
    return text or None


def _as_int(name: str, value) -> int | None:
    if value is None:
        return None
    try:
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, str):
            value = value.strip()
            if not value.lstrip("-").isdigit():
                raise ValueError
        number = int(value)
        if number != value and not isinstance(value, str):
            raise ValueError
    except (TypeError, ValueError):
        raise DistributedError(f"{name} must be a whole number, got {value!r}") from None
    return number


def _split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")  # [::1]:1234
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DistributedError(f"the coordinator address must be HOST:PORT (e.g. "
                               f"10.0.0.1:1234), got {address!r}")
    return host, int(port)


def _what_to_check(address: str, num_processes: int | None) -> str:
    ids = f"0..{num_processes - 1}" if num_processes is not None else "0..N-1"
    count = num_processes if num_processes is not None else "all"
    return (f"check that process 0 was started on the host of {address}, that {count} "
            f"processes were started with the same coordinator address and process count "
            f"and the process ids {ids} (each once), and that the port is open between the "
            f"hosts (firewall)")


def _wait_for_port(host: str, port: int, deadline: float) -> None:
    """Return once ``host:port`` accepts a TCP connection; raise at ``deadline``."""
    last = None
    while True:
        left = deadline - time.monotonic()
        try:
            with socket.create_connection((host, port), timeout=max(0.1, min(left, 2.0))):
                return
        except OSError as err:
            last = err
        if time.monotonic() + 0.25 >= deadline:
            raise DistributedError(f"no answer from {host}:{port} ({last})")
        time.sleep(0.25)


def _check_bindable(port: int) -> None:
    """Process 0 serves the coordinator on ``port`` (every interface, as JAX does)."""
    for family, address in ((socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")):
        try:
            probe = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            continue  # no IPv6 on this host: try IPv4
        with probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((address, port))
            except OSError as err:
                if err.errno == errno.EADDRINUSE:
                    raise DistributedError(f"port {port} is already in use on this host, so "
                                           f"process 0 cannot serve the coordinator there; "
                                           f"choose another port") from None
                continue
            return


def settings(coordinator_address: str | None = None, num_processes: int | None = None,
             process_id: int | None = None, *, cluster: bool = False,
             timeout: float = DEFAULT_TIMEOUT) -> tuple[str | None, int | None, int | None] | None:
    """The run described by the arguments and the environment (see :func:`initialize`), checked
    without starting anything (JAX is not imported): ``(address, count, id)``, any of them
    ``None`` where ``cluster`` leaves it to JAX's detection, or ``None`` for one process.

    Raises
    ------
    DistributedError : incomplete or inconsistent settings (one line, naming them).
    """
    address = _from_env(ENV_ADDRESS, coordinator_address)
    count = _as_int("the number of processes", _from_env(ENV_COUNT, num_processes))
    index = _as_int("the process id", _from_env(ENV_ID, process_id))
    given = {"the coordinator address": address, "the number of processes": count,
             "this process's id": index}
    if all(v is None for v in given.values()) and not cluster:
        return None
    missing = [k for k, v in given.items() if v is None]
    if missing and not cluster:
        raise DistributedError(
            f"a run of several processes needs the coordinator address, the number of "
            f"processes and this process's id; missing {', '.join(missing)} (options "
            f"--coordinator, --num-processes, --process-id, or ${ENV_ADDRESS}, "
            f"${ENV_COUNT}, ${ENV_ID}; or --distributed under srun or mpirun)")
    if count is not None and count < 1:
        raise DistributedError(f"the number of processes must be >= 1, got {count}")
    if index is not None and index < 0 or (count is not None and index is not None
                                           and index >= count):
        raise DistributedError(f"the process id must be in 0..{count - 1} for {count} "
                               f"processes, got {index}" if count is not None else
                               f"the process id must be >= 0, got {index}")
    if address is not None:
        _split_address(address)
    if not timeout > 0:
        raise DistributedError(f"the timeout must be > 0 seconds, got {timeout}")
    if count == 1 and index == 0:
        return None  # a run of one: nothing to coordinate
    return address, count, index


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, cluster: bool = False,
               timeout: float = DEFAULT_TIMEOUT, local_device_ids=None) -> bool:
    """Join a run of several processes (``jax.distributed.initialize``), before any JAX
    computation. Returns ``True`` when this process is one of several, ``False`` for a
    single process (nothing configured: nothing done).

    Parameters
    ----------
    coordinator_address : ``HOST:PORT`` of process 0, where it serves the coordinator
        (default ``$JAX_COORDINATOR_ADDRESS``). Any free port; every process gives the same.
    num_processes : how many processes (default ``$JAX_NUM_PROCESSES``).
    process_id : this process, ``0 .. num_processes - 1`` (default ``$JAX_PROCESS_ID``).
    cluster : let JAX read what is missing from a cluster launcher (SLURM's ``srun``,
        Open MPI's ``mpirun``, ...).
    timeout : seconds to find the coordinator and for every process to register (see the
        module notes); then :class:`DistributedError`, or, once registration has begun,
        a message and exit status 1.
    local_device_ids : the local devices this process uses (default: all, or under SLURM
        and Open MPI on GPUs one per process, as JAX decides).

    Raises
    ------
    DistributedError : settings incomplete or inconsistent, JAX already started, the
        coordinator not reachable (or its port taken) within ``timeout``.
    """
    import jax

    if jax.distributed.is_initialized():
        return jax.process_count() > 1  # started already (by the caller, or a first call)
    found = settings(coordinator_address, num_processes, process_id, cluster=cluster,
                     timeout=timeout)
    if found is None:
        return False
    address, count, index = found
    if _backend_started():
        raise DistributedError("JAX has already started its devices in this process; "
                               "initialize the distributed run before any JAX computation")
    deadline = time.monotonic() + timeout
    if address is not None:
        host, port = _split_address(address)
        if index == 0:
            _check_bindable(port)
        elif index is not None:
            try:
                _wait_for_port(host, port, deadline)
            except DistributedError as err:
                raise DistributedError(
                    f"process {index}: the coordinator {address} cannot be reached within "
                    f"{timeout:g} s: {err}; {_what_to_check(address, count)}") from None
    if jax.config.jax_cpu_collectives_implementation is None:
        # CPU devices of different processes exchange data through gloo (older JAX
        # versions have no default and refuse collectives across processes)
        jax.config.update("jax_cpu_collectives_implementation", "gloo")

    done = threading.Event()
    where = address or "the coordinator"

    def watchdog():
        if done.wait(max(0.0, deadline - time.monotonic())):
            return
        who = f"process {index}" if index is not None else "this process"
        sys.stderr.write(
            f"bayes-ude: {who}: the distributed run did not start within {timeout:g} s "
            f"(coordinator {where}, {count if count is not None else 'N'} processes; not "
            f"every process registered); {_what_to_check(where, count)}\n")
        sys.stderr.flush()
        os._exit(EXIT_TIMEOUT)

    guard = threading.Thread(target=watchdog, name="bayes-ude-distributed-watchdog",
                             daemon=True)
    guard.start()
    try:
        jax.distributed.initialize(
            address, count, index, local_device_ids=local_device_ids,
            initialization_timeout=int(timeout) + _JAX_GRACE_S)
    except (RuntimeError, ValueError, TypeError) as err:
        if isinstance(err, ValueError) and "defined" in str(err):  # no launcher found
            raise DistributedError(
                f"no cluster launcher (srun, mpirun) to read the run from ({err}); run under "
                f"one, or give the coordinator address, the number of processes and the "
                f"process id") from None
        raise DistributedError(f"the distributed run could not start (coordinator "
                               f"{where}): {err}") from None
    finally:
        done.set()
    return jax.process_count() > 1


def is_main_process() -> bool:
    """Whether this process writes results: process 0, or the only process."""
    import jax

    return jax.process_index() == 0


# ---------------------------------------------------------------------- the command


def command_settings(args, prog: str = "bayes-ude pk fit"):
    """:func:`settings` from the command's options (``--coordinator``,
    ``--num-processes``, ``--process-id``, ``--distributed``, ``--coordinator-timeout``);
    a bad value exits with a one-line error naming it, before any work."""
    try:
        return settings(getattr(args, "coordinator", None),
                        getattr(args, "num_processes", None),
                        getattr(args, "process_id", None),
                        cluster=bool(getattr(args, "distributed", False)),
                        timeout=getattr(args, "coordinator_timeout", DEFAULT_TIMEOUT))
    except DistributedError as err:
        raise SystemExit(f"{prog}: {err}") from None


class _WithoutWarnings(io.TextIOBase):
    """A text stream passing on every line except the command's own warnings (process 0
    prints them; the other processes would only repeat them)."""

    def __init__(self, stream, marker: str):
        self.stream, self.marker, self.pending = stream, marker, ""

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        kept = [line + "\n" for line in lines if self.marker not in line]
        if kept:
            self.stream.write("".join(kept))
        return len(text)

    def flush(self) -> None:
        if self.pending and self.marker not in self.pending:
            self.stream.write(self.pending)
            self.pending = ""
        self.stream.flush()

    def isatty(self) -> bool:
        return False


def start_command(args, prog: str = "bayes-ude pk fit") -> None:
    """The command's start under several processes (nothing with one): join the run
    (:func:`initialize`; its errors as one-line exits), and on every process but 0 send
    the results to a temporary folder removed at exit, no ``--json``, no progress, table
    or Python warnings, stdout discarded and the command's warning lines dropped from
    stderr: such a process prints only errors. Every process still runs every step (the
    steps after the fit, too, compute over all processes' devices)."""
    if command_settings(args, prog) is None:
        return
    try:
        several = initialize(getattr(args, "coordinator", None),
                             getattr(args, "num_processes", None),
                             getattr(args, "process_id", None),
                             cluster=bool(getattr(args, "distributed", False)),
                             timeout=getattr(args, "coordinator_timeout", DEFAULT_TIMEOUT))
    except DistributedError as err:
        raise SystemExit(f"{prog}: {err}") from None
    if not several or is_main_process():
        return
    folder = tempfile.mkdtemp(prefix="bayes-ude-not-written-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    args.out = Path(folder) / "out"
    args.json = None
    args.quiet = True
    warnings.simplefilter("ignore")
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the life of the process)
    sys.stderr = _WithoutWarnings(sys.stderr, f"{prog}: warning:")
