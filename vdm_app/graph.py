"""The prompt graph of an API-format ComfyUI workflow: reading it, changing values, execution order.

A workflow in API format ("Export (API)" in ComfyUI) is ``{node_id: {"class_type": …, "inputs": {…}}}``;
an input is a literal value or a link ``[source node id, output index]``. Only output nodes
(:data:`OUTPUT_NODES`) and what they depend on run, each after its inputs, as in ComfyUI.
"""
from __future__ import annotations

import copy
import graphlib
import json
from pathlib import Path

OUTPUT_NODES = ("SaveVideo",)


class WorkflowError(ValueError):
    """A workflow that cannot run: the message names the node, the input and what to change."""


def is_ui_format(data) -> bool:
    return isinstance(data, dict) and isinstance(data.get("nodes"), list) and "links" in data


def load_prompt(path) -> dict:
    """The API-format prompt in ``path`` (also accepts ``{"prompt": {...}}``, the body of ``POST /prompt``).
    A UI-format file is refused with a message pointing at its API-format twin."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WorkflowError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WorkflowError(f"{path} is not a readable JSON workflow: {e}") from None
    if is_ui_format(data):
        twin = path.parent / "api" / path.name
        hint = f"; this pack ships it as {twin}" if twin.is_file() else ""
        raise WorkflowError(f"{path} is a UI-format workflow (what the ComfyUI editor saves); vdm run needs the "
                            f"API format: in ComfyUI use Workflow → Export (API){hint}")
    if isinstance(data, dict) and isinstance(data.get("prompt"), dict):
        data = data["prompt"]
    check_prompt(data, str(path))
    return data


def check_prompt(prompt, name: str = "workflow") -> None:
    """Raise WorkflowError unless ``prompt`` is a non-empty API-format dict whose links point at existing nodes."""
    if not isinstance(prompt, dict) or not prompt:
        raise WorkflowError(f"{name} is not an API-format workflow (a JSON object of nodes with class_type)")
    for nid, node in prompt.items():
        if not isinstance(node, dict) or not isinstance(node.get("class_type"), str):
            raise WorkflowError(f"{name}: node {nid!r} has no class_type; is this an API-format workflow?")
        if not isinstance(node.get("inputs", {}), dict):
            raise WorkflowError(f"{name}: node {nid} ({node['class_type']}) has inputs that are not an object")
        for key, value in node.get("inputs", {}).items():
            if is_link(value) and str(value[0]) not in prompt:
                raise WorkflowError(f"{name}: input {key!r} of node {nid} ({node['class_type']}) is linked to "
                                    f"node {value[0]}, which is not in the workflow")


def is_link(value) -> bool:
    return (isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int))
            and not isinstance(value[0], bool) and isinstance(value[1], int) and not isinstance(value[1], bool))


def title(nid: str, node: dict) -> str:
    """``node 3 (VDM_SampleDDIMv, 'my title')`` for messages."""
    name = (node.get("_meta") or {}).get("title")
    return f"node {nid} ({node['class_type']}{', ' + repr(name) if name and name != node['class_type'] else ''})"


def parse_value(text: str):
    """``--set`` values are JSON where they parse (``2``, ``0.5``, ``true``, ``"x"``), else plain strings."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_sets(prompt: dict, assignments: list[str], accepts) -> dict:
    """A copy of ``prompt`` with ``NODE.INPUT=VALUE`` assignments applied. NODE is a node id, its title or its
    class_type; a bare ``INPUT=VALUE`` sets that input on every node that has it. Linked inputs are refused.
    ``accepts(class_type, input) -> bool`` says which inputs a node type has."""
    prompt = copy.deepcopy(prompt)
    for item in assignments:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise WorkflowError(f"--set {item!r}: write NODE.INPUT=VALUE (NODE: id, title or class type) or INPUT=VALUE")
        value = parse_value(text)
        targets = []
        for nid, node in prompt.items():
            for ref in (nid, node["class_type"], (node.get("_meta") or {}).get("title")):
                if ref and key.startswith(ref + "."):
                    targets.append((nid, key[len(ref) + 1:]))
                    break
        if not targets:
            if "." in key and not any(accepts(n["class_type"], key) for n in prompt.values()):
                ref = key.rsplit(".", 1)[0]
                raise WorkflowError(f"--set {item!r}: no node with id, title or class type {ref!r} (nodes: "
                                    + ", ".join(f"{n} {v['class_type']}" for n, v in prompt.items()) + ")")
            targets = [(nid, key) for nid, node in prompt.items() if accepts(node["class_type"], key)]
            if not targets:
                raise WorkflowError(f"--set {item!r}: no node in the workflow has an input {key!r}")
        for nid, name in targets:
            node = prompt[nid]
            if not accepts(node["class_type"], name):
                raise WorkflowError(f"--set {item!r}: {title(nid, node)} has no input {name!r}")
            if is_link(node.get("inputs", {}).get(name)):
                raise WorkflowError(f"--set {item!r}: input {name!r} of {title(nid, node)} is connected to node "
                                    f"{node['inputs'][name][0]}; --set changes values, not connections")
            node.setdefault("inputs", {})[name] = value
    return prompt


def id_key(nid: str):
    return (0, int(nid), "") if nid.isdigit() else (1, 0, nid)


def execution_order(prompt: dict) -> list[str]:
    """Ids of the output nodes and everything they depend on, each after its inputs (ComfyUI runs only
    these); ties in id order. Raises WorkflowError for a workflow without an output node or with a cycle."""
    outputs = [nid for nid, node in prompt.items() if node["class_type"] in OUTPUT_NODES]
    if not outputs:
        raise WorkflowError("the workflow has no output node (" + ", ".join(OUTPUT_NODES) + "), so nothing would be "
                            "saved; add Save Video")
    needed, todo = set(), list(outputs)
    while todo:
        nid = todo.pop()
        if nid not in needed:
            needed.add(nid)
            todo += [str(v[0]) for v in prompt[nid].get("inputs", {}).values() if is_link(v)]
    sorter = graphlib.TopologicalSorter({nid: {str(v[0]) for v in prompt[nid].get("inputs", {}).values() if is_link(v)}
                                         for nid in needed})
    try:
        sorter.prepare()
    except graphlib.CycleError as e:
        raise WorkflowError("the workflow has a cycle: nodes " + " → ".join(map(str, e.args[1]))) from None
    order = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready(), key=id_key)
        order += ready
        sorter.done(*ready)
    return order
