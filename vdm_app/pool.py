"""A batch shared among several ComfyUI servers: ``vdm run --server URL --server URL2 … --input-dir DIR``.

One worker thread per server takes the next clip it has not failed yet, runs it there
(``remote.run_on_server``) and downloads its outputs (atomically, to the batch's file names): each clip
runs once. A clip whose run fails on a server (the server died, lost the connection, or reported an
error) goes back to the others; it fails for good only when every server still alive has failed it.
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

    def worker(server: Server) -> None:
        while (clip := take(server.url)) is not None:
            log(f"--- {clip.path.name} on {server.url}")
            try:
                paths = run_on_server(server, clip.prompt, lambda nid, it, c=clip: c.outputs.get(nid) or under(it),
                                      log=log)
                error = None
            except (WorkflowError, OSError) as e:
                paths, error = None, e
            with cond:
                running[0] -= 1
                if error is None:
                    finished(paths, clip)
                else:
                    clip.failed_on.add(server.url)
                    clip.errors.append(f"{server.url}: {error}")
                    if _unreachable(error):
                        alive.discard(server.url)
                    again = bool(alive - clip.failed_on)
                    log(f"FAILED {clip.path.name} on {server.url}: {error}"
                        + ("; queued again for another server" if again else ""))
                    if again:
                        pending.append(clip)
                    else:
                        finished(None, clip)
                    if server.url not in alive:
                        log(f"giving up on {server.url}: it cannot be reached")
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
