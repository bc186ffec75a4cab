"""What the kernel spends to reach a BPF program and back, per hook kind, measured here.

A program's run_time_ns covers its body. Reaching it costs more, outside that span: a
uprobe's int3 trap and single-step (~16 us in these VMs, 300x a small body), the
tracepoint glue, a kprobe or an fentry trampoline. Calibration, per hook kind this
kernel supports:

- a trivial program (`r0 = 0; exit`, loaded with bpf(), attached with perf_event_open
  or BPF_RAW_TRACEPOINT_OPEN: no bcc, no compiler) on a target a small child process
  triggers itself: zlibVersion() in a private copy of libz in the temporary directory
  (uprobe, uretprobe; a uprobe is per inode, and no other agent can have probed a file
  made a moment ago: on a shared target, libc's `abs`, another agent's uprobe made the
  "without" arm trap too and the figure only the marginal cost of one more program,
  990 ns instead of 16 us; libc `abs` stays the fallback, logged, if the copy fails; the
  perf event is bound to the child, so no other process traps) or the getppid() syscall
  (the syscalls:sys_enter_getppid tracepoint, the raw sys_enter tracepoint);
- arms without and with the attachment, alternated in order, `events` triggers each,
  timed by the child's own thread CPU clock (the trap's kernel time is the child's;
  time it spent preempted is not), statistics off;
- an arm with statistics on gives the program's own run_time_ns / run_cnt (its body);
- cost = median over rounds of (with - without) / events, minus the body.

A syscall tracepoint has no private copy: any other program on a syscall tracepoint
(sys_enter*, sys_exit*, raw or not) sends every syscall down the traced path, so the
"without" arm pays part of the glue too. Such programs are looked for before the
tracepoint kinds are calibrated (kernel/hooks.py); when present the figure is served
with source "measured_shared": a lower bound, the marginal cost beside them.

Kinds the kernel lacks (no kprobe PMU; fentry loads refused) are reported
"unsupported"; kinds present but not calibrated by this code (kprobe, fentry on other
kernels) "uncalibrated", never priced at 0. See bench/hook_cost.py for the figures and
the calibration's CPU.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from linnix_exporter import log
from linnix_exporter.kernel import hooks, raw_attach
from linnix_exporter.kernel.bpf_syscall import _ATTR_SIZE, BpfError, ProgReader, _bpf
from linnix_exporter.kernel.host import ensure_tracefs
from linnix_exporter.kernel.stats_cost import OwnStatsFd, StatsCalibrator
from linnix_exporter.snapshot import HookCost as HookCost

BPF_RAW_TRACEPOINT_OPEN = 17
BPF_PROG_TYPE_RAW_TRACEPOINT = 17

# Events per arm. A uprobe hit costs ~16 us here: 1,000 hits are a 16 ms arm (and
# the whole uprobe calibration ~0.15 s of CPU), against a ~0.5 ms ctypes loop whose
# noise is a few us. A syscall tracepoint adds ~45 ns over a ~150 ns Python getppid()
# iteration (~1 us under load): 10,000 events make the difference 0.5-3 ms per arm.
UPROBE_EVENTS = 1_000
SYSCALL_EVENTS = 10_000
ROUNDS = 7  # a bad round (a neighbour, a reschedule) moves one arm: the median ignores 3
MIN_VALID_ROUNDS = 4
# The uprobe target: zlibVersion (lea + ret, nothing in Python calls it) in a private
# copy of libz, which every Python with zlib maps (the image's too: ldd of python3).
PRIVATE_LIB, PRIVATE_FUNC = "libz.so", "zlibVersion"
TARGET_FUNC = "abs"  # the fallback: a leaf libc function nothing in the child calls
# net/bpf/test_run.c keeps it for BPF selftests' fentry programs: in every BPF kernel
FENTRY_PROBE_FUNC = "bpf_fentry_test1"

# HookCost.source values (HookCost.failed tests for FAILED)
MEASURED, UNSUPPORTED, UNCALIBRATED, FAILED = "measured", "unsupported", "uncalibrated", "failed"
SHARED = "measured_shared"  # beside other programs on a syscall tracepoint: a lower bound
KINDS = ("uprobe", "uretprobe", "tracepoint", "raw_tracepoint", "kprobe", "kretprobe", "fentry")

_log = log.get("hooks")

# The child: reads "<call|syscall> <n>" lines, runs n triggers, answers its thread CPU ns.
# argv: the library and the function "call" calls (abs takes an int; zlibVersion none).
_CHILD = r"""
import ctypes, os, sys, time
f = getattr(ctypes.CDLL(sys.argv[1]), sys.argv[2])
a = (1,) if sys.argv[2] == "abs" else ()
g = os.getppid
t = time.thread_time_ns
out = sys.stdout
out.write("ready\n"); out.flush()
for line in sys.stdin:
    what, n = line.split()
    r = range(int(n))
    if what == "call":
        t0 = t()
        for _ in r: f(*a)
    else:
        t0 = t()
        for _ in r: g()
    out.write(f"{t() - t0}\n"); out.flush()
"""


@dataclass(frozen=True, slots=True)
class Calibration:
    costs: tuple[HookCost, ...]
    cpu_seconds: float  # ours (thread) + the child's (user + system)
    child_cpu_seconds: float
    at: float  # time.monotonic()

    def by_hook(self) -> dict[str, HookCost]:
        return {c.hook: c for c in self.costs}


class Trigger:
    """The small process that makes the events, pinned to one CPU (A/B arms on vCPUs of
    unequal speed give bimodal differences here)."""

    def __init__(self, cpu: int | None = None) -> None:
        self.private = _private_copy()  # removed by close()
        self.lib, self.func = (self.private, PRIVATE_FUNC) if self.private else ("", TARGET_FUNC)
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _CHILD, self.lib or "libc.so.6", self.func],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._in, self._out = self.proc.stdin, self.proc.stdout
        try:
            if cpu is None:
                cpu = max(os.sched_getaffinity(0))
            with contextlib.suppress(OSError):
                os.sched_setaffinity(self.proc.pid, {cpu})
            if self._out.readline().strip() != "ready":
                raise RuntimeError("hook calibration child did not start")
            self.lib = self.lib or _libc_path(self.proc.pid)
        except BaseException:
            self.proc.kill()
            self.proc.wait()
            self._remove()
            raise

    @property
    def target(self) -> str:
        """What the uprobe kinds trap on, as HookCost.target says it."""
        return f"private libz copy {self.func}()" if self.private else f"libc {self.func}()"

    def _remove(self) -> None:
        if self.private:
            with contextlib.suppress(OSError):
                os.unlink(self.private)

    def run(self, what: str, n: int) -> int:
        """Thread CPU ns the child spent making n events ('call' or 'syscall')."""
        self._in.write(f"{what} {n}\n")
        self._in.flush()
        return int(self._out.readline())

    def close(self) -> float:
        """Stop the child; its CPU seconds (user + system)."""
        self._in.close()
        _, _, usage = os.wait4(self.proc.pid, 0)
        self._out.close()
        self.proc.returncode = 0
        self._remove()
        return usage.ru_utime + usage.ru_stime


def _mapped(maps: str, prefix: str) -> str | None:
    """The path of the first file mapped in `maps` whose name starts with `prefix`."""
    with open(maps) as f:
        for line in f:
            path = line.split(maxsplit=5)[-1].strip()
            if os.path.basename(path).startswith(prefix):
                return path
    return None


def _libc_path(pid: int) -> str:
    path = _mapped(f"/proc/{pid}/maps", "libc.so")
    if path is None:
        raise RuntimeError("no libc mapped in the calibration child")
    return path


def _private_copy() -> str | None:
    """A copy of the libz this process maps, as a new file (a new inode) in the temporary
    directory (/tmp: an emptyDir in the DaemonSet, whose root is read-only); None, with a
    warning, if there is none or it cannot be written (the calibration then traps on
    libc `abs`, which another agent may have probed too)."""
    import zlib  # noqa: F401  (maps libz, if Python links it as a shared library)

    try:
        src = _mapped("/proc/self/maps", PRIVATE_LIB)
        if src is None:
            raise OSError(f"no {PRIVATE_LIB} mapped in this process")
        fd, path = tempfile.mkstemp(prefix="linnix-hook-cost-", suffix=".so")
        try:
            with os.fdopen(fd, "wb") as out, open(src, "rb") as f:
                shutil.copyfileobj(f, out)
        except BaseException:
            os.unlink(path)
            raise
    except OSError as e:
        _log.warning(
            "hook calibration: no private uprobe target, trapping on libc abs "
            "(an agent already probing it makes the uprobe cost look smaller)",
            error=str(e),
        )
        return None
    return path


def syscall_tracepoint_sharers(attachments: list[hooks.Hook]) -> list[hooks.Hook]:
    """The attachments that put every syscall on the traced path, as the calibration's
    syscall tracepoint kinds do: any tracepoint or raw tracepoint on sys_enter/sys_exit
    or one syscall's enter/exit event (the raw one may be named raw_syscalls:sys_enter)."""

    def syscall(target: str) -> bool:
        name = target.rsplit(":", 1)[-1]
        return name in ("sys_enter", "sys_exit") or name.startswith(("sys_enter_", "sys_exit_"))

    return [
        h for h in attachments if h.hook in ("tracepoint", "raw_tracepoint") and syscall(h.target)
    ]


def raw_tracepoint_open(name: str, prog_fd: int) -> int:
    a = ctypes.create_string_buffer(_ATTR_SIZE)
    cname = ctypes.create_string_buffer(name.encode())
    struct.pack_into("QI", a, 0, ctypes.addressof(cname), prog_fd)
    return _bpf(BPF_RAW_TRACEPOINT_OPEN, a)


@dataclass(frozen=True, slots=True)
class _Kind:
    hook: str
    prog_type: int
    trigger: str  # the child's "call" or "syscall"
    events: int
    target: str
    attach: Callable[[int, Trigger], list[int]]  # prog fd -> fds to close to detach


def _uprobe(ret: bool) -> Callable[[int, Trigger], list[int]]:
    def attach(prog: int, t: Trigger) -> list[int]:
        offset = raw_attach.elf_symbol_offset(t.lib, t.func)
        return _attached(raw_attach.open_uprobe(t.lib, offset, pid=t.proc.pid, retprobe=ret), prog)

    return attach


def _tracepoint(prog: int, t: Trigger) -> list[int]:
    return _attached(raw_attach.open_tracepoint("syscalls", "sys_enter_getppid"), prog)


def _attached(fd: int, prog: int) -> list[int]:
    """The perf event `fd` with `prog` attached; the fd is closed if attaching fails."""
    try:
        raw_attach.attach_perf(fd, prog)
    except OSError:
        os.close(fd)
        raise
    return [fd]


def _raw_tracepoint(prog: int, t: Trigger) -> list[int]:
    return [raw_tracepoint_open("sys_enter", prog)]


KPROBE = raw_attach.BPF_PROG_TYPE_KPROBE
MEASURABLE = (
    _Kind("uprobe", KPROBE, "call", UPROBE_EVENTS, "", _uprobe(False)),  # Trigger.target
    _Kind("uretprobe", KPROBE, "call", UPROBE_EVENTS, "", _uprobe(True)),
    _Kind(
        "tracepoint",
        raw_attach.BPF_PROG_TYPE_TRACEPOINT,
        "syscall",
        SYSCALL_EVENTS,
        "syscalls:sys_enter_getppid",
        _tracepoint,
    ),
    _Kind(
        "raw_tracepoint",
        BPF_PROG_TYPE_RAW_TRACEPOINT,
        "syscall",
        SYSCALL_EVENTS,
        "sys_enter (every syscall on the node, for the arm)",
        _raw_tracepoint,
    ),
)


def fentry_support() -> tuple[bool, str]:
    """Can this kernel load and attach an fentry program? (EPERM here, as bcc found.)"""
    from linnix_exporter.kernel import btf

    try:
        btf_id = btf.vmlinux().find_func(FENTRY_PROBE_FUNC)
        prog = raw_attach.load_prog(
            raw_attach.BPF_PROG_TYPE_TRACING,
            "lnx_hook_probe",
            expected_attach_type=raw_attach.BPF_TRACE_FENTRY,
            attach_btf_id=btf_id,
        )
    except (OSError, btf.BtfError) as e:
        return False, f"fentry program refused: {e}"
    try:
        os.close(raw_attach.link_create(prog, 0, raw_attach.BPF_TRACE_FENTRY))
    except OSError as e:
        return False, f"fentry attach refused: {e}"
    finally:
        os.close(prog)
    return True, ""


def unmeasured() -> list[HookCost]:
    """Kinds this code does not calibrate: unsupported here, or present but uncalibrated."""
    out = []
    if raw_attach.kprobe_supported():
        why = "kprobe PMU present; calibration not implemented for kprobes"
        out += [HookCost(k, UNCALIBRATED, reason=why) for k in ("kprobe", "kretprobe")]
    else:
        why = f"no kprobe PMU ({raw_attach.KPROBE_PMU})"
        out += [HookCost(k, UNSUPPORTED, reason=why) for k in ("kprobe", "kretprobe")]
    ok, why = fentry_support()
    if ok:
        out.append(HookCost("fentry", UNCALIBRATED, reason="calibration not implemented"))
    else:
        out.append(HookCost("fentry", UNSUPPORTED, reason=why))
    return out


class HookCalibrator:
    """One calibration: `calibrate(on, off)` with statistics off on entry (on/off switch
    them, as for kernel/stats_cost.py); leaves them off."""

    def __init__(
        self, rounds: int = ROUNDS, scale: float = 1.0, stats_cost_ns: float | None = None
    ) -> None:
        """`stats_cost_ns`: what statistics add to a run (kernel/stats_cost.py), used
        only if another holder keeps them on through the arms; None: such kinds fail."""
        self.rounds = rounds
        self.stats_cost_ns = stats_cost_ns
        self.scale = scale  # events per arm x scale (tests, the bench's larger runs)
        self._reader = ProgReader()

    def calibrate(
        self, on: Callable[[], None], off: Callable[[], None], kinds: tuple[str, ...] = KINDS
    ) -> Calibration:
        cpu0 = time.thread_time()
        ensure_tracefs()
        sharers = self._sharers(kinds)
        trigger = Trigger()
        costs: list[HookCost] = []
        try:
            for kind in MEASURABLE:
                if kind.hook in kinds:
                    if not kind.target:
                        kind = dataclasses.replace(kind, target=trigger.target)
                    cost = self._one(kind, trigger, on, off)
                    if kind.trigger == "syscall" and sharers and cost.source == MEASURED:
                        why = "; ".join(filter(None, (sharers, cost.reason)))
                        cost = dataclasses.replace(cost, source=SHARED, reason=why)
                    costs.append(cost)
        finally:
            child = trigger.close()
        costs += [c for c in unmeasured() if c.hook in kinds]
        ours = time.thread_time() - cpu0
        return Calibration(tuple(costs), ours + child, child, time.monotonic())

    @staticmethod
    def _sharers(kinds: tuple[str, ...]) -> str:
        """Why the syscall tracepoint kinds are only a lower bound ("" if nobody else is
        on a syscall tracepoint); read before our own programs are attached, logged."""
        if not any(k.trigger == "syscall" and k.hook in kinds for k in MEASURABLE):
            return ""
        try:
            others = syscall_tracepoint_sharers(hooks.all_hooks())
        except OSError as e:
            _log.warning("hook calibration: attachments not listed", error=str(e))
            return ""
        if not others:
            return ""
        ids = sorted({h.prog_id for h in others}, reverse=True)  # the newest first
        why = (
            f"shared: {len(ids)} other program(s) on syscall tracepoints "
            f"(prog_id {', '.join(map(str, ids[:10]))}): the marginal cost beside them"
        )
        _log.warning("hook calibration: syscall tracepoints already in use", reason=why)
        return why

    def _counters(self, prog: int) -> tuple[int, int]:
        info = self._reader.info(prog)
        return info.run_time_ns, info.run_cnt

    @contextlib.contextmanager
    def _attached(self, kind: _Kind, prog: int, trigger: Trigger) -> Iterator[None]:
        fds = kind.attach(prog, trigger)
        try:
            yield
        finally:
            for fd in fds:
                os.close(fd)

    def _one(
        self, kind: _Kind, trigger: Trigger, on: Callable[[], None], off: Callable[[], None]
    ) -> HookCost:
        n = max(1, int(kind.events * self.scale))
        try:
            prog = raw_attach.load_prog(kind.prog_type, f"lnx_hook_{kind.hook}"[:15])
        except BpfError as e:
            return HookCost(kind.hook, FAILED, target=kind.target, reason=str(e))
        try:
            trigger.run(kind.trigger, n)  # warm the loop before the first timed arm
            rounds = [self._round(kind, prog, trigger, n, i) for i in range(self.rounds)]
            on()
            try:
                body_arm = self._with(kind, prog, trigger, n)
            finally:
                off()
        except OSError as e:
            return HookCost(kind.hook, FAILED, target=kind.target, reason=str(e))
        finally:
            os.close(prog)
        return self._figure(kind, n, rounds, body_arm)

    def _with(self, kind: _Kind, prog: int, trigger: Trigger, n: int) -> tuple[int, int, int]:
        """One arm with the attachment: (child thread ns, Δrun_time_ns, Δrun_cnt)."""
        with self._attached(kind, prog, trigger):
            t0, c0 = self._counters(prog)
            took = trigger.run(kind.trigger, n)
            t1, c1 = self._counters(prog)
        return took, t1 - t0, c1 - c0

    def _round(
        self, kind: _Kind, prog: int, trigger: Trigger, n: int, i: int
    ) -> tuple[float, int, int]:
        """(added ns per event, Δrun_time_ns, Δrun_cnt of the "with" arm); the arms'
        order alternates with i."""
        if i % 2 == 0:
            without = trigger.run(kind.trigger, n)
            took, dt, dc = self._with(kind, prog, trigger, n)
        else:
            took, dt, dc = self._with(kind, prog, trigger, n)
            without = trigger.run(kind.trigger, n)
        return (took - without) / n, dt, dc

    def _figure(
        self,
        kind: _Kind,
        n: int,
        rounds: list[tuple[float, int, int]],
        body_arm: tuple[int, int, int],
    ) -> HookCost:
        """Rounds with statistics off (run_cnt still): hook = added - body (the body from
        the arm with statistics on). Statistics held on by another holder throughout
        (run_cnt moving in every round): the arms carry the statistics' own cost per
        run too, so hook = added - body - stats_cost_ns (kernel/stats_cost.py's figure),
        the body read from the same arms."""
        off = [a for a, _, dc in rounds if dc == 0]
        held = [(a, dt, dc) for a, dt, dc in rounds if dc > 0]
        fail = HookCost(kind.hook, FAILED, target=kind.target)
        if len(off) >= MIN_VALID_ROUNDS:
            _, dt, dc = body_arm
            if dc < n:
                why = f"the program ran {dc} times for {n} events with statistics on"
                return _replace(fail, why)
            added, body, extra, why = statistics.median(off), dt / dc, 0.0, ""
        elif len(held) >= MIN_VALID_ROUNDS and self.stats_cost_ns is not None:
            added = statistics.median(a for a, _, _ in held)
            body = sum(dt for _, dt, _ in held) / sum(dc for _, _, dc in held)
            extra = self.stats_cost_ns
            why = f"statistics held on by another holder: {extra:.0f} ns a run subtracted"
        else:
            return _replace(fail, "statistics switched on and off by another holder mid-arm")
        return HookCost(
            kind.hook,
            MEASURED,
            cost_ns=max(0.0, added - body - extra),
            added_ns=added,
            body_ns=body,
            target=kind.target,
            events=n,
            rounds=max(len(off), len(held)),
            reason=why,
        )


def _replace(c: HookCost, reason: str) -> HookCost:
    return HookCost(c.hook, c.source, target=c.target, reason=reason)


def calibrate_now() -> tuple[HookCost, ...]:
    """One calibration of every kind, with a statistics fd of our own for the body arms.
    If another holder (our own controller in always mode, a neighbour) keeps statistics
    on, their cost a run is estimated (kernel/stats_cost.py) and subtracted."""
    sw = OwnStatsFd()
    est = StatsCalibrator().estimate(None)
    cal = HookCalibrator(stats_cost_ns=est.cost_ns if est else None)
    return cal.calibrate(sw.on, sw.off).costs
