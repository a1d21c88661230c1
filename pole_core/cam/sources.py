"""CAM sources: what writes a variant's CAM store ``<results_dir>/cams/{variant}.h5``.

``cam.variants.<name>.source`` (default ``trained``) is a key of :data:`CAM_SOURCES`,
validated by :mod:`pole_core.config` (no schema enum, so a new source is one entry here).
Every source writes the same store (:mod:`pole_core.io.cam_store`: full-resolution
``cam``, stride-4 ``cam_s4``, ``keys``), one shard per job of the ``cams`` scatter,
merged by rule gather_cams, so eval_cam, crf, train_affinity, random_walk, export and the
segmenter read every source alike.

A new source: an entry here, a library function that writes one shard in the store
format, and a rule named ``rule`` with output ``cams/{variant}/shard_{scatteritem}.h5``
whose ``wildcard_constraints`` limit ``variant`` to the variants of this source
(``source_variants`` in workflow/rules/common.smk), so the rules never compete for a file.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CamSource:
    """One way of making a variant's CAMs."""

    rule: str  # the Snakemake rule that writes cams/{variant}/shard_{scatteritem}.h5
    network: bool  # trains a CAM network cam_net/{variant}/model.pt (rule train_cam)
    description: str


CAM_SOURCES: dict[str, CamSource] = {
    "trained": CamSource(
        rule="extract_cams",
        network=True,
        description="the CLIMS/POLE CAM network trained through the frozen CLIP (train_cam), "
        "multi-scale extraction (extract_cams, pole_core.cam.extract)",
    ),
    "clip_es": CamSource(
        rule="clip_es_cams",
        network=False,
        description="training-free CLIP-ES CAMs of the frozen CLIP ViT (clip_es_cams, "
        "pole_core.cam.clip_es and pole_core.cam.clip_es_store)",
    ),
}

#: The source of a variant that does not name one: today's trained CAM network.
DEFAULT_SOURCE = "trained"
