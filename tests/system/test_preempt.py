"""preempt.stop_on_signals: the stop request in the training process, never in the children it forks.

A forked child that inherited the stop handler would survive the SIGTERM with which ``multiprocessing.Pool`` ends its
workers, and ``Pool.terminate`` (the ``with Pool(...)`` exit of the decode pool) would wait for it forever: two study
cells decoding CIFAR-10 at once on a loaded machine hung that way for 20 min.
"""
import multiprocessing as mp
import os
import signal
import time

import pytest

from fastpnr.system import preempt

pytestmark = pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="needs the fork start method")


def _wait_forever(ready):
    ready.set()
    while True:
        time.sleep(0.1)


def _start_child():
    """A forked child that waits forever, once it runs its own code (a signal sent in the instant after the fork,
    before the child's fork hooks ran, would meet the parent's handler)."""
    ctx = mp.get_context("fork")
    ready = ctx.Event()
    child = ctx.Process(target=_wait_forever, args=(ready,))
    child.start()
    assert ready.wait(60)
    return child


def _terminate(process) -> int | None:
    """SIGTERM the process, then its exit code once it has gone (None if it is still alive after 30 s)."""
    process.terminate()
    process.join(30)
    alive = process.is_alive()
    if alive:  # the test fails, but leaves nothing behind
        os.kill(process.pid, signal.SIGKILL)
        process.join()
    return None if alive else process.exitcode


def test_a_child_forked_while_the_handlers_are_installed_dies_by_sigterm():
    with preempt.stop_on_signals() as request:
        child = _start_child()
        assert _terminate(child) == -signal.SIGTERM
        assert not request.requested  # the child's signal is not the parent's stop request


def test_the_parent_still_stops_on_sigterm_after_forking():
    with preempt.stop_on_signals() as request:
        child = _start_child()
        _terminate(child)
        os.kill(os.getpid(), signal.SIGTERM)
        assert request.signum == signal.SIGTERM


def test_a_pool_of_forked_workers_ends_inside_the_handlers():
    with preempt.stop_on_signals():
        with mp.get_context("fork").Pool(2) as pool:  # __exit__ is terminate(): SIGTERM to each worker, then join
            assert pool.map(abs, [-1, -2, -3]) == [1, 2, 3]
        for worker in pool._pool:  # the workers are gone (Pool.join would have hung otherwise)
            assert worker.exitcode is not None


def test_a_signal_in_the_instant_after_the_fork_takes_the_default_action(monkeypatch):
    """A SIGTERM that reaches a child before its handlers are restored (a pool worker that had not yet run when
    Pool.terminate signalled it) waits, blocked, and then ends the child; caught by the inherited stop handler, it was
    dropped and the child lived on."""
    restore = preempt._restore_in_forked_child

    def signal_in_the_window():
        os.kill(os.getpid(), signal.SIGTERM)  # the child still has the parent's handlers here
        restore()

    monkeypatch.setattr(preempt, "_restore_in_forked_child", signal_in_the_window)
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    with preempt.stop_on_signals() as request:
        pid = os.fork()
        if pid == 0:  # the child: a SIGTERM that was dropped lets it exit 0 after 10 s
            time.sleep(10)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == mask  # the parent's mask is back after the fork
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM, status
    assert not request.requested


def test_nested_and_restored():
    before = signal.getsignal(signal.SIGTERM)
    with preempt.stop_on_signals():
        with preempt.stop_on_signals():
            assert preempt._BEFORE[signal.SIGTERM] is before  # a child gets the handler of before the outermost
        assert preempt._BEFORE[signal.SIGTERM] is before
    assert preempt._BEFORE == {} and signal.getsignal(signal.SIGTERM) is before


def test_a_repeat_within_repeat_s_is_the_same_stop():
    with preempt.stop_on_signals() as request:
        os.kill(os.getpid(), signal.SIGTERM)  # the scheduler's signal
        os.kill(os.getpid(), signal.SIGTERM)  # the launcher's forward of it, at once: the process lives on
        assert request.signum == signal.SIGTERM


def _second_signal_after_repeat_s():
    with preempt.stop_on_signals() as request:
        os.kill(os.getpid(), signal.SIGUSR2)
        request._first_at -= preempt.REPEAT_S  # the first signal came REPEAT_S ago
        os.kill(os.getpid(), signal.SIGTERM)  # a second stop: the default action, now
        time.sleep(30)


def test_a_second_signal_after_repeat_s_ends_the_process_at_once():
    child = mp.get_context("fork").Process(target=_second_signal_after_repeat_s)
    child.start()
    child.join(30)
    assert child.exitcode == -signal.SIGTERM


def _said(lines: list, expected: list, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while lines != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return lines == expected


def test_ctrl_c_is_said_at_once_and_a_forked_childs_ctrl_c_is_not_the_runs():
    """The watcher thread says the first Ctrl-C (the main thread need not run); a child forked meanwhile has the
    SIGINT handler of before and no share in the signal pipe: its Ctrl-C ends it and is not counted as the run's."""
    before = signal.getsignal(signal.SIGINT)
    said = []
    with preempt.stop_on_signals() as request:
        request.catch_interrupts(said.append, "RUN")
        child = _start_child()
        os.kill(child.pid, signal.SIGINT)
        child.join(30)
        assert child.exitcode not in (None, 0)  # KeyboardInterrupt in the child
        assert not _said(said, [preempt.STOPPING], timeout=1.0) and not request.requested
        os.kill(os.getpid(), signal.SIGINT)  # no KeyboardInterrupt here: the stop at the next step boundary
        assert _said(said, [preempt.STOPPING]) and request.signum == signal.SIGINT
    assert signal.getsignal(signal.SIGINT) is before and preempt._WATCHING == []
