"""Benchmarks of the pipeline's stages against reference implementations (``make bench``).

Not part of the method: ``pole_core`` holds what the pipeline runs; this package holds
what it is measured against and how. ``python -m benchmarks --out results/bench`` runs the
sub-benchmarks (:mod:`benchmarks.run`):

* :mod:`benchmarks.extract`: IRNet's per-image CAM extraction loop (the speed baseline and
  the equivalence oracle of ``tests/test_extract.py``) against the batched
  :func:`pole_core.cam.extract.extract_cams`, with FLOP and conv-peak probes;
* :mod:`benchmarks.crf`: the dense CRF labels serially and over a process pool;
* :mod:`benchmarks.synthetic`: the synthetic images and the demo CAM net both use.

``benchmarks/gpu.sh`` (``make bench-gpu``) runs the GPU checks. Snakemake's per-rule
``benchmark:`` files are not here: they are written to ``<results_dir>/benchmarks/<rule>/``.
"""
