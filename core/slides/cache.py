"""An LRU of open slides shared by the tile server and the pages (one handle per slide, reopened after a failure)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

from core.slides.slide import Slide, open_slide


class SlideCache:
    """An LRU of open slides keyed by (path, mpp override), safe across threads (tile server, pages)."""

    def __init__(self, maxsize: int = 32, cache_dir: str | Path | None = None) -> None:
        self.maxsize = maxsize
        self.cache_dir = cache_dir
        self._slides: OrderedDict[tuple[str, float | None], Slide] = OrderedDict()
        self._lock = threading.Lock()
        self._opening: dict[tuple[str, float | None], threading.Lock] = {}

    def get(self, path: str | Path, mpp: float | None = None, cache_dir: str | Path | None = None) -> Slide:
        """The open slide for ``path`` (opened on first use; plain images converted under ``cache_dir``)."""
        key = (str(Path(path).resolve()), mpp)
        with self._lock:
            if key in self._slides and self._slides[key].failed:
                del self._slides[key]  # reopen rather than keep failing (one bad tile must not blank the slide)
            if key in self._slides:
                self._slides.move_to_end(key)
                return self._slides[key]
            open_lock = self._opening.setdefault(key, threading.Lock())
        with open_lock:  # one opener per slide; others wait and then share the handle
            with self._lock:
                if key in self._slides:
                    return self._slides[key]
            slide = open_slide(path, mpp=mpp, cache_dir=cache_dir or self.cache_dir)
            with self._lock:
                self._slides[key] = slide
                self._opening.pop(key, None)
                # evicted handles are not closed: another thread may still be reading them; GC closes them
                while len(self._slides) > self.maxsize:
                    self._slides.popitem(last=False)
            return slide

    def clear(self) -> None:
        with self._lock:
            self._slides.clear()

    def __len__(self) -> int:
        return len(self._slides)
