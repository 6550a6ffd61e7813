"""A batch shared among several ComfyUI servers: ``vdm run --server URL --server URL2 … --input-dir DIR``.

One worker thread per server takes the next clip it has not failed yet, runs it there
(``remote.run_on_server``) and downloads its outputs (atomically, to the batch's file names): each clip
runs once. A clip whose run fails on a server (the server died, lost the connection, cut a reply off,
reported an error: any exception) goes back to the others; it fails for good only when every server still
alive has failed it.
A server that cannot be reached any more is given up and the others carry on. One progress bar counts
finished clips. Clips whose outputs exist are skipped before the pool starts, so a batch resumes.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .graph import WorkflowError
from .lib import ProgressBar
from .remote import Server, run_on_server


@dataclass(eq=False)
class Clip:
    """One clip of the batch: its prompt, the files it must write, the servers that failed it and why."""

    path: Path
    prompt: dict
    outputs: dict[str, Path]
    failed_on: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)


def _unreachable(error: Exception) -> bool:
    """Whether ``error`` says the server itself is gone, rather than that it could not run the clip."""
    return "cannot reach ComfyUI" in str(error)


def _describe(error: BaseException) -> str:
    """The error's message; its type too where it is not one of ours (a KeyError's message alone says little)."""
    return str(error) if isinstance(error, WorkflowError) else f"{type(error).__name__}: {error}"


def run_pool(servers: list[Server], clips: list[Clip], *, log: Callable[[str], None],
             under: Callable[[dict], Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Run every clip once on one of ``servers``; returns (written files, [(clip, error)] of failed clips).
    ``under(item)`` names an output file the workflow writes besides the batch's own."""
    cond = threading.Condition()
    pending, alive, running, done = list(clips), {s.url for s in servers}, [0], [0]
    written: list[Path] = []
    failed: list[tuple[Path, str]] = []
    bar = ProgressBar("vdm run", unit="clip")

    def finished(paths: list[Path] | None, clip: Clip) -> None:  # called holding cond
        if paths is None:
            failed.append((clip.path, "; ".join(clip.errors)))
        else:
            written.extend(paths)
        done[0] += 1
        bar(done[0], len(clips))

    def take(url: str) -> Clip | None:
        """The next clip this server may run, waiting while others run; None when there is none left."""
        with cond:
            while url in alive:
                mine = next((c for c in pending if url not in c.failed_on), None)
                if mine is not None:
                    pending.remove(mine)
                    running[0] += 1
                    return mine
                if running[0] == 0:
                    return None
                cond.wait()
            return None

    def settle(url: str, clip: Clip, outcome: list[Path] | BaseException) -> None:  # called holding cond
        """Record a clip's run on server ``url``: its files, or its error (then it goes back to the others)."""
        if not isinstance(outcome, BaseException):
            finished(outcome, clip)
            return
        clip.failed_on.add(url)
        clip.errors.append(f"{url}: {_describe(outcome)}")
        if _unreachable(outcome):
            alive.discard(url)
        again = bool(alive - clip.failed_on)
        if again:
            pending.append(clip)
        else:
            finished(None, clip)
        log(f"FAILED {clip.path.name} on {url}: {_describe(outcome)}"
            + ("; queued again for another server" if again else ""))
        if url not in alive:
            log(f"giving up on {url}: it cannot be reached")

    def worker(server: Server) -> None:
        while (clip := take(server.url)) is not None:
            outcome: list[Path] | BaseException = WorkflowError("its run stopped without an answer")
            try:
                log(f"--- {clip.path.name} on {server.url}")
                outcome = run_on_server(server, clip.prompt,
                                        lambda nid, it, c=clip: c.outputs.get(nid) or under(it), log=log)
            except Exception as e:  # any error of one server: the clip goes back to the others
                outcome = e
            finally:  # the bookkeeping survives anything, so the other workers never wait forever
                with cond:
                    try:
                        settle(server.url, clip, outcome)
                    finally:
                        running[0] -= 1
                        cond.notify_all()

    threads = [threading.Thread(target=worker, args=(s,), daemon=True) for s in servers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for clip in pending:  # no server left that may run them
        clip.errors.append("no server left to run it")
        failed.append((clip.path, "; ".join(clip.errors)))
    return written, failed
