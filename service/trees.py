"""Rooted trees: the flat rows of `latent_tree()` nested, drawn as indented text, and listed as
a Neuronpedia quick list."""

from __future__ import annotations

from typing import Any

from service.sources import neuronpedia


def nest(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The root with `children` lists, from flat rows (node, parent, other_parents, ...)."""
    by_label = {row["node"]: {**row, "children": []} for row in rows}
    root: dict[str, Any] | None = None
    for row in rows:
        node = by_label[row["node"]]
        if row["parent"] is None:
            root = node
        else:
            by_label[row["parent"]]["children"].append(node)
    if root is None:
        raise ValueError("rows hold no root")
    for node in by_label.values():
        node["children"].sort(key=lambda n: (-(n["score"] or 0), n["node"]))
    return root


def context_text(context: dict[str, Any]) -> str | None:
    """One top activation as text: the active token in [brackets], newlines shown as ⏎."""
    if context.get("token") is None:
        return None
    text = f"{context['context_before'] or ''}[{context['token']}]{context['context_after'] or ''}"
    return f"{context['value']:.3g}: " + text.replace("\n", "⏎").replace("\r", "")


def quick_list(rows: list[dict[str, Any]], linked: dict[str, str]) -> str | None:
    """The tree's nodes (flat rows) of saes linked to Neuronpedia (`linked`: sae name -> its
    MODEL/SOURCE) as a Neuronpedia quick-list link, named after the root; None if there are
    none."""
    latents = []
    for row in rows:
        sae, idx = row["node"].rsplit("/", 1)
        if sae in linked:
            latents.append((linked[sae], int(idx)))
    return neuronpedia.quick_list(f"latent-trees {rows[0]['node']}", latents) if latents else None


def render(root: dict[str, Any], n_contexts: int = 1) -> str:
    """Indented text: label, score, max_act, frequency; other parents after 'also under';
    under each node, its `n_contexts` top activations in context when the texts are known."""
    lines: list[str] = []

    def describe(node: dict[str, Any]) -> str:
        parts = [node["node"]]
        if node.get("explanation"):
            parts.append(f"“{node['explanation']}”")
        if node["score"] is not None:
            parts.append(f"score {node['score']:.3f}")
        parts.append(f"max {node['max_act']:.3g}")
        parts.append(f"freq {node['frequency']:.3g}")
        if node.get("max_dec_cos") is not None:
            parts.append(f"max_dec_cos {node['max_dec_cos']:.2f}")
        if node.get("other_parents"):
            parts.append("also under " + ", ".join(node["other_parents"]))
        return "  ".join(parts)

    def walk(node: dict[str, Any], prefix: str, last: bool, top: bool) -> None:
        branch = "" if top else ("└── " if last else "├── ")
        lines.append(prefix + branch + describe(node))
        child_prefix = prefix + ("" if top else ("    " if last else "│   "))
        rail = child_prefix + ("│   " if node["children"] else "    ")
        for context in node.get("contexts", [])[:n_contexts]:
            text = context_text(context)
            if text is not None:
                lines.append(rail + "  » " + text)
        for i, child in enumerate(node["children"]):
            walk(child, child_prefix, i == len(node["children"]) - 1, False)

    walk(root, "", True, True)
    return "\n".join(lines)
