# CLIP: pretrain the mini-CLIP on the world's captions; zero-shot check of the world.


rule clip_pretrain:
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
        "benchmarks/clip_pretrain/clip_pretrain.tsv"
    script:
        "../scripts/clip_pretrain.py"


rule clip_zeroshot:
    input:
        data=data_root(),
        clip=clip_input(),
    output:
        f"{R}/eval/clip_zeroshot.json",
    params:
        clip=config["clip"],
        split=config["data"]["val_split"],
        max_images=config["data"]["max_images"],
        device=config["device"],
        code=code_version("clip", "data"),
    threads: workflow.cores
    resources:
        gpu=GPU,
    log:
        "logs/clip_zeroshot/clip_zeroshot.log",
    benchmark:
        "benchmarks/clip_zeroshot/clip_zeroshot.tsv"
    script:
        "../scripts/clip_zeroshot.py"
