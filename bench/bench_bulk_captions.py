"""A bulk caption edit and its undo with 20,000 images, on the Captions screen: naive vs ours, in one run.

    python bench/bench_bulk_captions.py [--images 20000]

The real app runs headless (120x40, halfcell images) on the Captions screen of a project made like
bench_captions.py's (one prepared PNG, one caption in the session per image; every 17th has none). Keys are sent
as the terminal sends them (the driver's message, not the pilot: its press waits until the whole process is idle,
worker threads included) and a key's wait is the time until the list's cursor has moved.

naive:  what the screen did before: on the UI thread, `CaptionSet.apply` (new lines, token counts, flags for every
        changed caption), the session update, a flush (session.toml written) and the list's new rows; the same for
        F4's undo. A key sent as it begins waits for all of it.
ours:   the screen's `apply_bulk` / F4: a worker computes the change (CaptionSet.prepare), updates the session under
        the SessionStore's lock and writes it; the UI thread commits the computed values in one pass over the
        changed captions and repaints the visible rows. Keys are sent one after another while it runs: how many
        were handled before the edit was in, and how long each waited (the worker shares the GIL with the UI).
Then, at this size, the UI thread's cost of one key elsewhere on the screen: moving, paging, cycling the filter,
typing one caption, the bulk dialog's preview (recomputed per keystroke there). A watcher task on the event loop
sleeps 2 ms at a time and records how late it wakes: the longest lateness while a key is handled.

Prints what it measured; asserts nothing about time (machines differ; this one may be shared).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_captions import make_project  # noqa: E402

from lorawizard.core.session.document import Session  # noqa: E402


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


class StallWatch:
    """The longest time the event loop did not get back to a 2 ms sleep (= the longest wait of a key)."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            start = time.perf_counter()
            await asyncio.sleep(0.002)
            self.worst = max(self.worst, time.perf_counter() - start - 0.002)

    def reset(self) -> None:
        self.worst = 0.0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()


async def run(project: Path) -> None:
    from lorawizard.tui import images

    images._chosen = "halfcell"
    from lorawizard.tui.app import LoraWizardApp
    from lorawizard.tui.screens.captions import CaptionsScreen
    from lorawizard.tui.widgets.caption_list import CaptionList

    app = LoraWizardApp(Session.open_project(project), start_step="captions")
    watch = StallWatch()
    start = time.perf_counter()
    async with app.run_test(size=(120, 40)) as pilot:
        watch.start()
        await pilot.pause()
        await app.workers.wait_for_complete()
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, CaptionsScreen) and screen.captions is not None
        captions = screen.captions
        listing = screen.query_one(CaptionList)
        print(f"open the Captions screen ({len(captions)} captions): ready in {time.perf_counter() - start:.2f} s, "
              f"longest UI stall {ms(watch.worst)} (the caption files are read in a worker)")
        await pilot.pause(0.3)

        def plan():  # noqa: ANN202
            return captions.plan_affix("ohwx style, ", ", film grain")

        from textual import events

        driver = app._driver
        assert driver is not None

        async def key_latency(key: str = "down") -> float:
            """Send one key as the terminal does (no pilot: its waits wait for the whole process to idle) and wait
            until the list's cursor moved: how long a person waits to see the key do something."""
            cursor = listing.cursor
            sent = time.perf_counter()
            driver.send_message(events.Key(key, None))
            while listing.cursor == cursor:
                await asyncio.sleep(0.001)
            return time.perf_counter() - sent

        listing.focus()
        idle = [await key_latency("down" if n % 2 else "up") for n in range(1, 21)]
        print(f"a key while idle: median {ms(statistics.median(idle))}, max {ms(max(idle))}")

        # -- naive: everything on the UI thread, as the key handler did
        def naive_apply() -> int:
            changed = captions.apply(plan())
            screen._store(changed)
            screen.flush()
            screen._after_bulk(changed)
            return len(changed)

        def naive_undo() -> int:
            _, restored, _ = captions.undo()
            screen._store(restored)
            screen.flush()
            screen._after_bulk(restored)
            return len(restored)

        async def naive(name: str, action: Callable[[], int]) -> float:
            await pilot.pause(0.1)
            cursor = listing.cursor
            sent = time.perf_counter()
            driver.send_message(events.Key("down", None))  # pressed as the edit starts: waits for all of it
            count = action()
            took = time.perf_counter() - sent
            while listing.cursor == cursor:
                await asyncio.sleep(0.001)
            waited = time.perf_counter() - sent
            print(f"naive {name:<5} {count:>6} captions: UI thread busy {ms(took)}; a key pressed as it began waited"
                  f" {ms(waited)}")
            return waited

        # -- ours: the screen's worker; keys are pressed one after another while it runs
        async def ours(name: str, begin: Callable[[], object]) -> float:
            await pilot.pause(0.1)
            before = [item.body for item in captions.items]
            began = time.perf_counter()
            begin()
            while screen._bulk is None:  # F4 goes through the app's queue first
                await asyncio.sleep(0.001)
            waits: list[float] = []
            while screen._bulk is not None:
                waits.append(await key_latency("down" if len(waits) % 2 == 0 else "up"))
            took = time.perf_counter() - began
            await pilot.pause(0.05)
            changed = sum(a != b.body for a, b in zip(before, captions.items, strict=True))
            print(f"ours  {name:<5} {changed:>6} captions: in after {ms(took)}; {len(waits)} keys handled meanwhile, "
                  f"each waited median {ms(statistics.median(waits))}, max {ms(max(waits))}")
            return max(waits)

        def f4() -> None:
            driver.send_message(events.Key("f4", None))

        naive_a = await naive("apply", naive_apply)
        naive_u = await naive("undo", naive_undo)
        ours_a = await ours("apply", lambda: screen.apply_bulk(plan()))
        ours_u = await ours("undo", f4)
        print(f"=> longest wait for a key, naive / ours: apply {naive_a / ours_a:.1f}x, undo {naive_u / ours_u:.1f}x")

        # -- one key elsewhere at this size
        async def keys_cost(name: str, pressed: list[str]) -> None:
            stalls = []
            for key in pressed:
                await pilot.pause(0.02)
                watch.reset()
                await pilot.press(key)
                await pilot.pause()
                stalls.append(watch.worst)
            print(f"{name:<24} per key: median UI stall {ms(statistics.median(stalls))}, max {ms(max(stalls))}")

        listing.focus()
        await keys_cost("down (next caption)", ["down"] * 20)
        await keys_cost("page down", ["pagedown"] * 10)
        await keys_cost("filter cycle (Ctrl+F)", ["ctrl+f"] * 8)
        await pilot.press("a")  # back to all
        await pilot.press("tab")
        await keys_cost("typing one caption", list("abcdefghij"))
        await pilot.press("escape", "tab")
        await pilot.press("ctrl+r")
        await pilot.pause()
        await keys_cost("bulk dialog preview", list("red"))
        await pilot.press("escape")
        await pilot.pause()
        for pattern, regex in (("red", False), (r"\b(\w+) light\b", True)):
            began = time.perf_counter()
            preview = captions.plan_replace(pattern, "x", regex=regex)
            print(f"  (its plan alone, {'regex ' if regex else ''}{pattern!r}: {ms(time.perf_counter() - began)} for "
                  f"{preview.scope} captions, {len(preview.changes)} change)")
        watch.stop()
        await pilot.press("ctrl+q")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        began = time.perf_counter()
        project = make_project(Path(tmp), args.images)
        print(f"generated a project with {args.images} prepared images in {time.perf_counter() - began:.1f} s"
              f" (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
        asyncio.run(run(project))


if __name__ == "__main__":
    main()
