"""The shapes of the API's JSON, for the OpenAPI document.

Handlers return plain dicts serialised once (validating every response would cost more than the
query); the property tests check each response against these models through the OpenAPI.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    """Every error: a 4xx or 5xx status with this body."""

    ok: Literal[False]
    error: str = Field(description="one line: what was wrong and what was expected")


class Sae(BaseModel):
    label: str = Field(description="the sae's name, e.g. S/2")
    d_sae: int
    level: int = Field(description="rank by d_sae within the family, 1 = smallest")
    state: str
    n_latents: int
    neuronpedia_id: str | None = Field(description="for linking out, when stored")


class Family(BaseModel):
    name: str
    n_tokens: int | None
    saes: list[Sae]
    suggested_root: str | None = Field(
        description="a forest root to open first: a tree of 4 to 25 nodes, the deepest"
    )
    store_floor: float | None = Field(
        description="the highest store floor its jobs ran with: the lowest exact threshold"
    )


class Families(BaseModel):
    ok: Literal[True]
    families: list[Family]


class Split(BaseModel):
    parent: str
    n_children: int = Field(description="its qualifying children")


class LevelSummary(BaseModel):
    parent_sae: str
    child_sae: str
    parent_level: int
    child_level: int
    scored: bool = Field(description="false until the pair's job is done")
    n_edges: int = Field(description="qualifying edges")
    split: int = Field(description="parents with 2 or more qualifying children")
    merge: int = Field(description="children with 2 or more qualifying parents")
    persist: int = Field(
        description="one qualifying child whose one qualifying parent it is, masked cosine"
        " >= 0.9 both ways"
    )
    new: int = Field(description="children with no qualifying parent")
    vanish: int = Field(description="parents with no qualifying child")
    largest_splits: list[Split] = Field(description="up to five, most children first")


class FamilySummary(BaseModel):
    ok: Literal[True]
    family: str
    threshold: float
    min_active_tokens: int
    levels: list[LevelSummary]


class Context(BaseModel):
    """One of a latent's largest activations, with the tokens around it when known."""

    rank: int
    position: int
    value: float
    context_before: str | None
    token: str | None
    context_after: str | None


class ScoreParts(BaseModel):
    """Every score part of an edge (SPEC.md section 2)."""

    masked_cos: float
    masked_cos_parent: float
    mcs: float
    max_ratio: float
    score: float
    n_coactive: int
    adjacent: bool = Field(description="the two saes are neighbours by level")
    dec_cos: float | None = Field(
        description="cosine of the two decoder vectors (both saes from checkpoints)"
    )


class ScoredLatent(ScoreParts):
    """A parent or child of a latent card, with every score part of their edge."""

    label: str
    qualifies: bool = Field(description="score > threshold, both latents active enough")


class ForestPlace(BaseModel):
    root: str
    depth: int
    parent: str | None
    score: float | None


class ExplanationOut(BaseModel):
    description: str
    type_name: str | None
    explanation_model_name: str | None


class LatentCard(BaseModel):
    ok: Literal[True]
    label: str
    family: str
    sae: str
    level: int
    d_sae: int
    idx: int
    max_act: float
    n_active: int
    frequency: float
    max_dec_cos: float | None = Field(
        description="largest decoder cosine to a latent of the next smaller sae (low: new at"
        " this width)"
    )
    neuronpedia_id: str | None
    threshold: float
    forest: ForestPlace | None = Field(description="place in the forest at threshold 0.6")
    contexts: list[Context]
    explanations: list[ExplanationOut] = Field(
        description="imported from Neuronpedia, first shown first"
    )
    parents: list[ScoredLatent]
    children: list[ScoredLatent]
    n_parents: int = Field(description="stored edges to parents (`parents` holds up to `limit`)")
    n_children: int = Field(description="stored edges to children (`children` holds up to `limit`)")


class FlatNode(BaseModel):
    node: str
    parent: str | None
    depth: int
    score: float | None
    other_parents: list[str]
    max_act: float
    frequency: float
    max_dec_cos: float | None = Field(
        description="largest decoder cosine to a latent of the next smaller sae"
    )
    explanation: str | None = Field(description="its first imported explanation")
    contexts: list[Context]


class NestedNode(FlatNode):
    children: list[NestedNode]


class Tree(BaseModel):
    ok: Literal[True]
    threshold: float
    min_active_tokens: int
    shape: Literal["nested", "flat"]
    root: NestedNode | None = Field(description="with shape=nested")
    nodes: list[FlatNode] | None = Field(description="with shape=flat")
    n_nodes: int = Field(description="nodes the tree has, shown or not")
    left_out: int = Field(description="nodes beyond `max_nodes`, not shown")
    quick_list: str | None = Field(
        description="the shown nodes as a Neuronpedia quick list (those of linked saes)"
    )


class DagNode(BaseModel):
    id: str
    depth: int
    sae: str
    level: int
    max_act: float
    frequency: float
    explanation: str | None


class DagLink(BaseModel):
    source: str
    target: str
    weight: float = Field(description="the edge's score")
    best: bool = Field(description="the link the target hangs under in the rooted tree")


class Dag(BaseModel):
    ok: Literal[True]
    threshold: float
    nodes: list[DagNode]
    links: list[DagLink]
    n_nodes: int = Field(description="nodes the DAG has, shown or not")
    left_out: int = Field(description="nodes beyond `max_nodes`, not shown")


class EdgeRow(ScoreParts):
    parent: str
    child: str
    parent_sae: str
    child_sae: str
    parent_level: int
    child_level: int


class EdgePage(BaseModel):
    ok: Literal[True]
    rows: list[EdgeRow]
    next: str | None = Field(description="pass as `after` for the next page; null on the last")


class Match(BaseModel):
    label: str
    sae: str
    max_act: float
    frequency: float
    root: str | None
    depth: int | None


class Matches(BaseModel):
    ok: Literal[True]
    rows: list[Match]
