"""Wall time, peak memory and machine load for the LM benchmark scripts (imported by them, not run)."""

from __future__ import annotations

import os
import threading
import time

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    """Resident set size of this process (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def load_average() -> str:
    """The 1/5/15-minute load averages, as ``uptime`` prints them: the machine is shared, so timings need them."""
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg()) + f" on {os.cpu_count()} cores"


class Cost:
    """Context manager measuring wall seconds and the peak RSS increase over the RSS at entry (sampled every 5 ms)."""

    def __enter__(self) -> Cost:
        self.start_rss = self.peak_rss = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        self.start = time.perf_counter()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak_rss = max(self.peak_rss, rss_bytes())

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.start
        self._stop.set()
        self._thread.join()
        self.peak_rss = max(self.peak_rss, rss_bytes())
        self.peak_mib = (self.peak_rss - self.start_rss) / 2**20
