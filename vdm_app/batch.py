"""``vdm run``: a workflow once, or once per clip of a folder, here or on ComfyUI servers.

A batch over a folder runs one job per clip (the workflow's one ``LoadVideo`` file replaced by the clip)
and names the output after the clip, ``<output dir>/<clip stem>.mp4`` (``<clip stem>_<node id>.mp4``
with several save nodes). A clip whose outputs all exist is skipped, and outputs are written
atomically, so an interrupted batch resumes where it stopped without redoing or touching finished clips.
"""
from __future__ import annotations

import copy
import sys
from pathlib import Path

from .executor import accepts, save_settings, check_nodes, numbered_name, run_prompt
from .graph import OUTPUT_NODES, WorkflowError, id_key, apply_sets, execution_order, load_prompt
from .lib import video_io
from .pool import Clip, run_pool
from .remote import Server, run_on_server


def video_nodes(prompt: dict) -> list[str]:
    return [nid for nid, node in prompt.items() if node["class_type"] == "LoadVideo"]


def list_clips(folder) -> list[Path]:
    """The clips in ``folder`` (files with a video suffix video_io reads), sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise WorkflowError(f"--input-dir {folder} is not a folder")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in video_io.READ_SUFFIXES
                  and not p.name.startswith("."))


def batch_outputs(prompt: dict, clip: Path, output_dir) -> dict[str, Path]:
    """``{save node id: output path}`` for one clip: ``<clip stem><suffix>``, or ``<clip stem>_<node id><suffix>``
    when the workflow saves several videos."""
    saves = sorted((nid for nid, n in prompt.items() if n["class_type"] in OUTPUT_NODES), key=id_key)
    suffix = {nid: save_settings(nid, prompt[nid].get("inputs", {}))[1] for nid in saves}
    out = Path(output_dir)
    if len(saves) == 1:
        return {saves[0]: out / f"{clip.stem}{suffix[saves[0]]}"}
    return {nid: out / f"{clip.stem}_{nid}{suffix[nid]}" for nid in saves}


def batch_jobs(prompt: dict, input_dir, output_dir):
    """``(clip, prompt for this clip, {save node: path}, done)`` for every clip in ``input_dir``."""
    loaders = video_nodes(prompt)
    if len(loaders) != 1:
        raise WorkflowError(f"--input-dir needs a workflow with exactly one LoadVideo node (this one has "
                            f"{len(loaders)}); e.g. workflows/api/extend_video.json")
    clips = list_clips(input_dir)
    if not clips:
        raise WorkflowError(f"--input-dir {input_dir} holds no clips ({', '.join(video_io.READ_SUFFIXES)})")
    for clip in clips:
        job = copy.deepcopy(prompt)
        job[loaders[0]]["inputs"]["file"] = str(clip)
        paths = batch_outputs(prompt, clip, output_dir)
        yield clip, job, paths, all(p.exists() for p in paths.values())


def _under(output_dir: Path, item: dict) -> Path:
    """Where a downloaded output goes: its server subfolder and name under ``output_dir`` (kept inside it)."""
    rel = Path(item.get("subfolder") or "") / Path(item["filename"]).name
    if rel.is_absolute() or ".." in rel.parts:
        rel = Path(Path(item["filename"]).name)
    return output_dir / rel


def run_workflow(path, sets=(), *, input_dir=None, output_dir=".", servers=(), device=None,
                 log=None) -> tuple[list[Path], list[tuple[Path, str]]]:
    """``vdm run``: run the workflow in ``path`` once, or once per clip of ``input_dir`` (skipping clips whose
    outputs exist), here or on the ComfyUI ``servers`` (URLs; several share a batch, ``pool.run_pool``).
    Returns (written files, [(clip, error message)] of failed clips)."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    prompt = apply_sets(load_prompt(path), list(sets), accepts)
    output_dir = Path(output_dir)
    remotes = [Server(url) for url in servers]
    if len({s.url for s in remotes}) != len(remotes):
        raise WorkflowError("--server: the same server is given twice")
    remote = remotes[0] if remotes else None
    if remote is None:
        check_nodes(prompt, execution_order(prompt))
    if input_dir is None:
        if len(remotes) > 1:
            raise WorkflowError("several --server share the clips of an --input-dir; for one run give one --server")
        if remote is None:
            return run_prompt(prompt, numbered_name(output_dir), device=device, log=log), []
        return run_on_server(remote, prompt, lambda nid, it: _under(output_dir, it), log=log), []
    todo = []
    for clip, job, paths, done in batch_jobs(prompt, input_dir, output_dir):
        if done:
            log(f"skip {clip.name}: {', '.join(str(p) for p in paths.values())} exists")
        else:
            todo.append(Clip(clip, job, paths))
    if len(remotes) > 1:
        return run_pool(remotes, todo, log=log, under=lambda it: _under(output_dir, it))
    written, failed = [], []
    for item in todo:
        clip, job, paths = item.path, item.prompt, item.outputs
        log(f"--- {clip.name}")
        try:
            if remote is None:
                written += run_prompt(job, lambda nid, prefix, suffix: paths[nid], device=device, log=log)
            else:
                written += run_on_server(remote, job, lambda nid, it: paths.get(nid) or _under(output_dir, it), log=log)
        except (WorkflowError, OSError, ValueError, MemoryError, FloatingPointError) as e:
            log(f"FAILED {clip.name}: {e}")
            failed.append((clip, str(e)))
        except Exception as e:  # a server's malformed reply fails its clip, as in a pool; never the batch
            if remote is None:
                raise
            log(f"FAILED {clip.name}: {type(e).__name__}: {e}")
            failed.append((clip, f"{type(e).__name__}: {e}"))
    return written, failed
