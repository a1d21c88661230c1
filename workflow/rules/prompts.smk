# Stage B: prompt-class learning, the per-image choice of each class's token (POLE).
# prompts.source file: the choices come from a released selection file, so neither the
# baseline CAMs nor CLIP are inputs.

PROMPTS_FROM_FILE = config["prompts"]["source"] == "file"
if PROMPTS_FROM_FILE and not config["prompts"]["file"]:
    raise WorkflowError("config: prompts.source is 'file' but prompts.file is not set")


rule select_prompts:
    input:
        data=data_root(),
        aug=sbd_input(),
        clip=[] if PROMPTS_FROM_FILE else clip_input(),
        cams=[] if PROMPTS_FROM_FILE else f"{R}/cams/baseline.h5",
        file=config["prompts"]["file"] if PROMPTS_FROM_FILE else [],
    output:
        selected=f"{R}/prompts/selected.json",
        histogram=f"{R}/prompts/histogram.json",
    params:
        prompts=config["prompts"],
        clip={} if PROMPTS_FROM_FILE else config["clip"],
        split=config["data"]["train_split"],
        max_images=config["data"]["max_images"],
        device=config["device"],
        code=code_version("prompts", "clip", "data"),
    threads: workflow.cores
    resources:
        gpu=GPU,
    log:
        "logs/select_prompts/select_prompts.log",
    benchmark:
        "benchmarks/select_prompts/select_prompts.tsv"
    script:
        "../scripts/select_prompts.py"
