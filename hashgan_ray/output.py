"""What a person sees on the console: the command line's logging set-up and
the line it prints per training epoch.

Without -v a run shows the project's progress bars, one line per epoch and a
summary. Ray's own INFO lines (Ray Train's per-report and per-checkpoint
lines, Ray Data's execution plans and progress) stay in Ray's log files under
the session directory (/tmp/ray/session_latest/logs); its warnings and errors
still show. -v shows everything, with times and logger names.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

# Ray Data's logging config without -v: its default one with the console at
# WARNING (ray-data.log keeps everything). Read from the environment when
# ray.data is imported, in this process and in the workers of the local Ray it
# starts (they inherit the environment).
RAY_DATA_LOGGING = Path(__file__).with_name("ray_data_logging.yaml")
QUIET_LOGGERS = ("faiss",)      # faiss.loader's INFO lines: each CPU build it tries
_ray_level = logging.INFO       # Ray's own default, where setup_output was not called


class _ConsoleFormat(logging.Formatter):
    """INFO lines as bare messages; warnings and errors say their level and source."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        if record.levelno >= logging.WARNING:
            return f"{record.levelname} {record.name}: {message}"
        return message


def setup_output(verbose: bool) -> None:
    """Console logging for one command (call once, before Ray is imported)."""
    global _ray_level
    _ray_level = logging.INFO if verbose else logging.WARNING
    handler = logging.StreamHandler()
    if verbose:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(_ConsoleFormat())
        os.environ.setdefault("RAY_DATA_LOGGING_CONFIG", str(RAY_DATA_LOGGING))
        # The commands show their own bar where one helps (data synth, index build).
        os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])


def ray_log_level() -> int:
    """The level of Ray's console logs: what `ray.init` is given (cli/ray_options.py)
    and what Ray Train's workers and controller use (train/loop.py)."""
    return _ray_level


class RayDataConsoleFilter(logging.Filter):
    """Ray Data's console filter (ray_data_logging.yaml): its own (records marked
    hidden), and its advice to turn progress bars back on, which the commands
    turned off on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (getattr(record, "hide", False)
                    or record.getMessage().startswith("Progress bars disabled"))


def epoch_line(metrics: dict, epochs: int) -> str:
    """One line for an epoch's report (train/loop.py): validation MAP, samples/s,
    the time left at the mean epoch time, then the method's loss terms to 3
    decimals (their number differs by method, so they come last)."""
    epoch = metrics["epoch"]
    losses = " ".join(f"{k[5:]} {v:.3f}" for k, v in metrics.items() if k.startswith("loss_"))
    left = (epochs - epoch) * metrics["seconds_per_epoch"]
    return (f"epoch {epoch}/{epochs}  MAP i->t {metrics['map_i2t']:.3f} t->i "
            f"{metrics['map_t2i']:.3f}  {metrics['samples_per_s']:.0f} samples/s  "
            f"{_duration(left)} left  loss {losses}")


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"
