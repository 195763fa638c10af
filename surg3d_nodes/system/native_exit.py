"""Leave the process at a deadline even while a thread holds the GIL in native code.

A Python watchdog thread cannot run while another thread sits in a C call that holds the GIL (rclpy's
`destroy_node` stuck inside Fast DDS does), and `faulthandler`'s own watchdog can only exit with status 1. This
one is a POSIX timer whose expiry starts a thread in libc that calls `_exit(code)` directly: no Python, no GIL.
"""

from __future__ import annotations

import ctypes
import ctypes.util

_SIGEV_THREAD = 2       # <signal.h>: the expiry runs a function on a new thread
_CLOCK_MONOTONIC = 1    # <time.h>


class _Sigevent(ctypes.Structure):
    """glibc's `struct sigevent` (64 bytes on 64-bit Linux) for SIGEV_THREAD: value, signo, notify, then the
    function and its thread attributes inside a union padded to 48 bytes."""

    _fields_ = [("value", ctypes.c_void_p), ("signo", ctypes.c_int), ("notify", ctypes.c_int),
                ("function", ctypes.c_void_p), ("attributes", ctypes.c_void_p), ("_pad", ctypes.c_int * 8)]


class _Timespec(ctypes.Structure):
    _fields_ = [("sec", ctypes.c_long), ("nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("interval", _Timespec), ("value", _Timespec)]


_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


class ExitTimer:
    """`_exit(code)` after `after_s` seconds unless `cancel`ed first. The exit skips every buffer and handler:
    flush what must be seen before arming it."""

    def __init__(self, after_s: float, code: int) -> None:
        if not 0 <= code <= 255:
            raise ValueError(f"exit code {code} is not in 0..255")
        # `_exit` takes an int; the timer passes its `union sigval` (pointer-sized, in the first argument
        # register on x86-64 and aarch64) whose low bits are the code.
        event = _Sigevent(value=code, notify=_SIGEV_THREAD,
                          function=ctypes.cast(_libc._exit, ctypes.c_void_p).value)
        self._timer = ctypes.c_void_p()
        if _libc.timer_create(_CLOCK_MONOTONIC, ctypes.byref(event), ctypes.byref(self._timer)) != 0:
            raise OSError(ctypes.get_errno(), "timer_create failed")
        whole = int(after_s)
        when = _Itimerspec(value=_Timespec(whole, int((after_s - whole) * 1e9)))
        if _libc.timer_settime(self._timer, 0, ctypes.byref(when), None) != 0:
            self.cancel()
            raise OSError(ctypes.get_errno(), "timer_settime failed")

    def cancel(self) -> None:
        """Disarm and delete the timer (idempotent)."""
        if self._timer.value is not None:
            _libc.timer_delete(self._timer)
            self._timer = ctypes.c_void_p()
