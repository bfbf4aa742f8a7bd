"""After a failed `make test`: the errors of the newest local Ray sessions' own
logs, for the case pytest cannot report (Ray's driver ends the process with
exit code 1 when its raylet dies, before pytest prints anything).

    python tests/support/ray_postmortem.py [--sessions 2] [--lines 15]
"""
import argparse
import re
from pathlib import Path

ROOT = Path("/tmp/ray")
FILES = ("raylet.out", "raylet.err", "gcs_server.out", "gcs_server.err",
         "python-core-driver-*.log")
# Ray's C++ log lines: "[time E pid tid] ..." (errors, fatals) and its last words,
# among them a fatal signal ("*** SIGSEGV received at time=...")
SERIOUS = re.compile(r"^\[[^]]* [EF] \d+ \d+\]|Exiting because|marked dead|Check failed|"
                     r"QuickExit|\*\*\* SIG|SIGSEGV|SIGABRT|SIGBUS|Bus error|out of memory",
                     re.I)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=2)
    parser.add_argument("--lines", type=int, default=15)
    args = parser.parse_args()
    sessions = sorted((p for p in ROOT.glob("session_2*") if p.is_dir()),
                      key=lambda p: p.stat().st_mtime)[-args.sessions:]
    if not sessions:
        print(f"ray postmortem: no Ray session under {ROOT}")
    for session in sessions:
        print(f"== ray postmortem: {session}")
        for pattern in FILES:
            for log in sorted((session / "logs").glob(pattern)):
                lines = [line.rstrip() for line in log.read_text(errors="replace").splitlines()
                         if SERIOUS.search(line)]
                if lines:
                    print(f"-- {log.name}: {len(lines)} serious line(s), the last "
                          f"{min(len(lines), args.lines)}:")
                    print("\n".join(line[:300] for line in lines[-args.lines:]))
        threads = session / "logs" / "pytest-threads-at-shutdown.txt"      # tests/helpers.py
        if threads.is_file():
            print(f"-- the test process's threads at ray.shutdown ({threads.name}):")
            print(threads.read_text(errors="replace").rstrip())


if __name__ == "__main__":
    main()
