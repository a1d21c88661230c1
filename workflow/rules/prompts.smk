# Stage B: prompt-class learning, the per-image choice of each class's token (POLE).


rule select_prompts:
    input:
        data=data_root(),
        clip=clip_input(),
        cams=f"{R}/cams/baseline.h5",
    output:
        selected=f"{R}/prompts/selected.json",
        histogram=f"{R}/prompts/histogram.json",
    params:
        prompts=config["prompts"],
        clip=config["clip"],
        split=config["data"]["train_split"],
        max_images=config["data"]["max_images"],
        device=config["device"],
        code=code_version("prompts", "clip", "data"),
    threads: workflow.cores
    log:
        "logs/select_prompts/select_prompts.log",
    benchmark:
        "benchmarks/select_prompts/select_prompts.tsv"
    script:
        "../scripts/select_prompts.py"
