# Stage B: prompt-class learning, the per-image choice of each class's token (POLE).
# prompts.source file: the choices come from a released selection file, so neither the
# baseline CAMs nor CLIP are inputs.

rule select_prompts:
    """POLE's selection on the CAMs of one variant: baseline -> prompts/selected.json (or
    prompts.file), another select_from variant -> prompts/selected_<variant>.json."""
    conda:
        CONDA_ENV
    input:
        data=data_root(),
        aug=sbd_input(),
        clip=lambda wc: [] if selection_from_file(wc) else clip_input(),
        cams=lambda wc: [] if selection_from_file(wc) else f"{R}/cams/{selection_origin(wc)}.h5",
        file=lambda wc: config["prompts"]["file"] if selection_from_file(wc) else [],
    output:
        selected=f"{R}/prompts/selected{{origin}}.json",
        histogram=f"{R}/prompts/histogram{{origin}}.json",
    wildcard_constraints:
        # "" (baseline) or "_<variant>" for every other select_from variant
        origin=SELECTION_ORIGINS,
    params:
        prompts=config["prompts"],
        clip=lambda wc: {} if selection_from_file(wc) else config["clip"],
        from_file=selection_from_file,
        split=config["data"]["train_split"],
        max_images=config["data"]["max_images"],
        mask_source="cam",
        device=config["device"],
        code=code_version("prompts", "clip", "data"),
    threads: workflow.cores
    resources:
        gpu=GPU,
    log:
        "logs/select_prompts/select_prompts{origin}.log",
    benchmark:
        f"{R}/benchmarks/select_prompts/select_prompts{{origin}}.tsv"
    script:
        "../scripts/select_prompts.py"


rule select_prompts_oracle:
    """The oracle variant's tokens (cam.variants.<name>.prompts: oracle): the same selection
    fed the ground-truth masks instead of the baseline CAMs, the ceiling of POLE's choice."""
    conda:
        CONDA_ENV
    input:
        data=data_root(),
        aug=sbd_input(),
        clip=clip_input(),
    output:
        selected=f"{R}/prompts/oracle.json",
        histogram=f"{R}/prompts/oracle_histogram.json",
    params:
        prompts=config["prompts"],
        clip=config["clip"],
        split=config["data"]["train_split"],
        max_images=config["data"]["max_images"],
        from_file=False,
        mask_source="gt",
        device=config["device"],
        code=code_version("prompts", "clip", "data"),
    threads: workflow.cores
    resources:
        gpu=GPU,
    log:
        "logs/select_prompts_oracle/select_prompts_oracle.log",
    benchmark:
        f"{R}/benchmarks/select_prompts_oracle/select_prompts_oracle.tsv"
    script:
        "../scripts/select_prompts.py"
