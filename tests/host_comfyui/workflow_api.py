"""Convert a ComfyUI UI-format workflow (example_workflows/*.json) to the API prompt format using /object_info."""

from __future__ import annotations

WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})


def is_widget(spec) -> bool:
    """True when an input spec is a widget (value stored in widgets_values), not a link."""
    kind = spec[0]
    return isinstance(kind, list) or kind in WIDGET_TYPES


def node_inputs(node: dict, info: dict, link_sources: dict) -> dict:
    """API inputs of one UI node: widget values in input order (skipping control_after_generate), then links."""
    specs = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
    order = info["input_order"].get("required", []) + info["input_order"].get("optional", [])
    linked = {i["name"]: link_sources[i["link"]] for i in node.get("inputs", []) if i.get("link") is not None}
    values = list(node.get("widgets_values", []))
    inputs = {}
    for name in order:
        spec = specs[name]
        if name in linked:
            inputs[name] = linked[name]
        elif is_widget(spec) and values:
            inputs[name] = values.pop(0)
        if is_widget(spec) and name in linked and values:
            values.pop(0)
        options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
        if is_widget(spec) and options.get("control_after_generate") and values:
            values.pop(0)
    return inputs


def to_api_prompt(workflow: dict, object_info: dict) -> dict:
    """{node id: {"class_type", "inputs"}} for every active node of a UI workflow."""
    link_sources = {link[0]: [str(link[1]), link[2]] for link in workflow["links"]}
    return {
        str(node["id"]): {"class_type": node["type"],
                          "inputs": node_inputs(node, object_info[node["type"]], link_sources)}
        for node in workflow["nodes"] if node.get("mode", 0) == 0
    }
