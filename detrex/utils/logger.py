"""Logging setup shared by tools and library code.

:func:`setup_logger` attaches a console handler (rank 0) and a file handler (``log.txt``, or
``log.txt.rank{N}`` on other ranks) to the ``detrex`` logger and, by default, to ``projects``
(project code), ``fvcore`` (checkpointer) and ``__main__`` (tools), so that every
``logging.getLogger(__name__)`` in those packages prints.
"""
import functools
import logging
import os
import sys
import time
from collections import Counter
from typing import Iterable, Optional

from .file_io import PathManager

__all__ = ["setup_logger", "log_first_n", "log_every_n", "log_every_n_seconds"]

DEFAULT_EXTRA_NAMES = ("projects", "fvcore", "__main__")


class _ColorfulFormatter(logging.Formatter):
    def __init__(self, *args, root_name: str, abbrev_name: str = "", **kwargs):
        self._root_name = root_name + "."
        self._abbrev_name = (abbrev_name + ".") if abbrev_name else ""
        super().__init__(*args, **kwargs)

    def formatMessage(self, record):
        record.name = record.name.replace(self._root_name, self._abbrev_name)
        log = super().formatMessage(record)
        try:
            from termcolor import colored
        except ImportError:  # pragma: no cover
            return log
        if record.levelno == logging.WARNING:
            prefix = colored("WARNING", "red", attrs=["blink"])
        elif record.levelno in (logging.ERROR, logging.CRITICAL):
            prefix = colored("ERROR", "red", attrs=["blink", "underline"])
        else:
            return log
        return prefix + " " + log


class _StdoutHandler(logging.StreamHandler):
    """Writes to the CURRENT ``sys.stdout`` (so redirection after setup, e.g. by pytest, works)."""

    def __init__(self):
        super().__init__(sys.stdout)

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value):
        pass


_HANDLER_TAG = "_detrex_setup_logger"


def _setup_one(output, distributed_rank, color, name, abbrev_name, enable_propagation,
               configure_stdout):
    logger = logging.getLogger(name)
    # Reconfigure rather than pile up: handlers installed by an earlier call (e.g. a previous
    # in-process run with another output dir) are replaced, so each line is printed once and
    # lands only in the current run's log file.
    for h in [h for h in logger.handlers if getattr(h, _HANDLER_TAG, False)]:
        logger.removeHandler(h)
    logger.setLevel(logging.DEBUG)
    logger.propagate = enable_propagation
    if abbrev_name is None:
        abbrev_name = "d2x" if name == "detrex" else name
    plain_formatter = logging.Formatter(
        "[%(asctime)s] %(name)s %(levelname)s: %(message)s", datefmt="%m/%d %H:%M:%S"
    )
    handlers = []
    if configure_stdout and distributed_rank == 0:
        ch = _StdoutHandler()
        if color:
            ch.setFormatter(_ColorfulFormatter(
                "[%(asctime)s %(name)s]: %(message)s",
                datefmt="%m/%d %H:%M:%S",
                root_name=name,
                abbrev_name=str(abbrev_name),
            ))
        else:
            ch.setFormatter(plain_formatter)
        handlers.append(ch)
    if output is not None:
        if output.endswith(".txt") or output.endswith(".log"):
            filename = output
        else:
            filename = os.path.join(output, "log.txt")
        if distributed_rank > 0:
            filename = filename + ".rank{}".format(distributed_rank)
        PathManager.mkdirs(os.path.dirname(filename) or ".")
        fh = logging.StreamHandler(_cached_log_stream(filename))
        fh.setFormatter(plain_formatter)
        handlers.append(fh)
    for h in handlers:
        h.setLevel(logging.DEBUG)
        setattr(h, _HANDLER_TAG, True)
        logger.addHandler(h)
    return logger


def setup_logger(
    output: Optional[str] = None,
    distributed_rank: int = 0,
    *,
    color: bool = True,
    name: str = "detrex",
    abbrev_name: Optional[str] = None,
    enable_propagation: bool = False,
    configure_stdout: bool = True,
    extra_names: Optional[Iterable[str]] = None,
) -> logging.Logger:
    """Configure the ``name`` logger (and, for ``name="detrex"``, ``projects``/``fvcore``/``__main__``).

    Args:
        output: a file name ending in ``.txt``/``.log``, or a directory (logs go to
            ``<dir>/log.txt``). ``None``: no file. Ranks > 0 write ``<file>.rank{N}``.
        distributed_rank: only rank 0 logs to stdout.
        name: root logger name to configure.
        extra_names: further logger names given the same handlers; defaults to
            ``("projects", "fvcore", "__main__")`` when ``name == "detrex"``, else none.
    Returns:
        the ``name`` logger. Calling again reconfigures: the handlers of the earlier call are
        replaced (never duplicated), so in-process runs each log to their own output.
    """
    if extra_names is None:
        extra_names = DEFAULT_EXTRA_NAMES if name == "detrex" else ()
    logger = _setup_one(output, distributed_rank, color, name, abbrev_name, enable_propagation,
                        configure_stdout)
    for extra in extra_names:
        _setup_one(output, distributed_rank, color, extra, extra, enable_propagation,
                   configure_stdout)
    return logger


@functools.lru_cache(maxsize=None)
def _cached_log_stream(filename):
    # one handle per file, shared by all loggers writing to it
    io = PathManager.open(filename, "a", buffering=_get_log_stream_buffer_size(filename))
    import atexit

    atexit.register(io.close)
    return io


def _get_log_stream_buffer_size(filename: str) -> int:
    if "://" not in filename:
        return -1  # default buffering for local files
    return 1024 * 1024


def _find_caller():
    """The (module name, (filename, lineno, function)) of the caller of the log_* helper."""
    frame = sys._getframe(2)
    while frame:
        code = frame.f_code
        if os.path.join("utils", "logger.") not in code.co_filename:
            mod_name = frame.f_globals["__name__"]
            if mod_name == "__main__":
                mod_name = "detrex"
            return mod_name, (code.co_filename, frame.f_lineno, code.co_name)
        frame = frame.f_back


_LOG_COUNTER = Counter()
_LOG_TIMER = {}


def log_first_n(lvl, msg, n=1, *, name=None, key="caller"):
    """Log ``msg`` only the first ``n`` times (per caller, or per message with key="message")."""
    if isinstance(key, str):
        key = (key,)
    assert len(key) > 0
    caller_module, caller_key = _find_caller()
    hash_key = ()
    if "caller" in key:
        hash_key = hash_key + caller_key
    if "message" in key:
        hash_key = hash_key + (msg,)
    _LOG_COUNTER[hash_key] += 1
    if _LOG_COUNTER[hash_key] <= n:
        logging.getLogger(name or caller_module).log(lvl, msg)


def log_every_n(lvl, msg, n=1, *, name=None):
    """Log ``msg`` once every ``n`` calls from the same place."""
    caller_module, key = _find_caller()
    _LOG_COUNTER[key] += 1
    if n == 1 or _LOG_COUNTER[key] % n == 1:
        logging.getLogger(name or caller_module).log(lvl, msg)


def log_every_n_seconds(lvl, msg, n=1, *, name=None):
    """Log ``msg`` at most once every ``n`` seconds from the same place."""
    caller_module, key = _find_caller()
    last_logged = _LOG_TIMER.get(key, None)
    current_time = time.time()
    if last_logged is None or current_time - last_logged >= n:
        logging.getLogger(name or caller_module).log(lvl, msg)
        _LOG_TIMER[key] = current_time
