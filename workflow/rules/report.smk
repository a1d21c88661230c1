# Summary table, figures and the inputs of `snakemake --report`.


rule summary:
    conda:
        CONDA_ENV
    input:
        evals=expand(f"{R}/eval/{{stage}}_{{variant}}.json", stage=["cam", "crf", "pseudo"], variant=VARIANTS)
        + [f"{R}/eval/seg_val.json"]
        if SCORED
        else [],
        histogram=f"{R}/prompts/histogram.json",
    output:
        json=f"{R}/summary.json",
        md=report(f"{R}/summary.md", caption="../report/summary.rst", category="Summary"),
    params:
        eval_dir=lambda wildcards, output: str(Path(output.json).parent / "eval"),
        unscored=None
        if SCORED
        else f"{config['data']['root']} has no ground-truth masks (masks/): the score stages did not run",
        benchmarks_dir=f"{R}/benchmarks",
        variants=VARIANTS,
        code=code_version("report"),
    log:
        "logs/summary/summary.log",
    script:
        "../scripts/summary.py"


rule figures:
    conda:
        CONDA_ENV
    input:
        data=data_root(),
        aug=sbd_input(),
        evals=expand(f"{R}/eval/cam_{{variant}}.json", variant=VARIANTS),
        cams=expand(f"{R}/cams/{{variant}}.h5", variant=VARIANTS),
        masks=f"{R}/pseudo_masks/{SEG_VARIANT}",
        seg_model=f"{R}/seg/model.pt",
        histogram=f"{R}/prompts/histogram.json",
    output:
        overlays=report(f"{R}/figures/overlays.png", caption="../report/overlays.rst", category="Figures"),
        curve=report(f"{R}/figures/cam_threshold_curve.png", caption="../report/curve.rst", category="Figures"),
        histogram=report(f"{R}/figures/prompt_histogram.png", caption="../report/histogram.rst", category="Figures"),
    params:
        n_images=config["report"]["n_images"],
        split=config["data"]["eval_split"],
        val_split=config["data"]["val_split"],
        variants=VARIANTS,
        seg_variant=SEG_VARIANT,
        max_images=config["data"]["max_images"],
        code=code_version("report"),
    log:
        "logs/figures/figures.log",
    script:
        "../scripts/figures.py"


rule effective_config:
    """The config this run used (schema defaults + config files + --config), as YAML."""
    conda:
        CONDA_ENV
    output:
        f"{R}/config.yaml",
    params:
        config=dict(config),
    log:
        "logs/effective_config.log",
    script:
        "../scripts/effective_config.py"
