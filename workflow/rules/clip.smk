# CLIP: pretrain the mini-CLIP on the world's captions; zero-shot check and probe of the world.


rule clip_pretrain:
    conda:
        CONDA_ENV
    input:
        data=data_root(),
    output:
        f"{R}/clip/model.pt",
    params:
        mini=config["clip"]["mini"],
        pretrain=config["clip"]["pretrain"],
        seed=config["seed"],
        device=config["device"],
        code=code_version("clip"),
    threads: workflow.cores
    resources:
        gpu=GPU,
    log:
        "logs/clip_pretrain/clip_pretrain.log",
    benchmark:
        f"{R}/benchmarks/clip_pretrain/clip_pretrain.tsv"
    script:
        "../scripts/clip_pretrain.py"


rule clip_zeroshot:
    conda:
        CONDA_ENV
    input:
        data=data_root(),
        clip=clip_input(),
    output:
        json=f"{R}/eval/clip_zeroshot.json",
        probe=report(f"{R}/eval/probe.md", caption="../report/probe.rst", category="Scores"),
    params:
        clip=config["clip"],
        probe=config["eval"]["probe"],
        ground_truth=SCORED,
        split=config["data"]["val_split"],
        max_images=config["data"]["max_images"],
        device=config["device"],
        code=code_version("clip", "data", "cam"),
    threads: workflow.cores
    resources:
        gpu=GPU,
    log:
        "logs/clip_zeroshot/clip_zeroshot.log",
    benchmark:
        f"{R}/benchmarks/clip_zeroshot/clip_zeroshot.tsv"
    script:
        "../scripts/clip_zeroshot.py"
