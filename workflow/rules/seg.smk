# Stage E: segmentation network trained on the pseudo-masks, scored on the val split.


rule train_seg:
    conda:
        CONDA_ENV
    input:
        data=data_root(),
        aug=sbd_input(),
        masks=f"{R}/pseudo_masks/{SEG_VARIANT}",
    output:
        f"{R}/seg/model.pt",
    params:
        seg=config["seg"],
        split=config["data"]["train_split"],
        max_images=config["data"]["max_images"],
        crop_fill=config["data"]["crop_fill"],
        seed=config["seed"],
        device=config["device"],
        code=code_version("seg", "data"),
    threads: workflow.cores
    resources:
        gpu=GPU,
    log:
        "logs/train_seg/train_seg.log",
    benchmark:
        f"{R}/benchmarks/train_seg/train_seg.tsv"
    script:
        "../scripts/train_seg.py"


rule eval_seg:
    conda:
        CONDA_ENV
    input:
        data=data_root(),
        aug=sbd_input(),
        model=f"{R}/seg/model.pt",
    output:
        score=report(
            f"{R}/eval/seg_val.json",
            caption="../report/eval_seg.rst",
            category="Scores",
        ),
        pred=directory(f"{R}/seg/pred"),
    params:
        seg=config["seg"],
        crf=config["crf"],
        split=config["data"]["val_split"],
        max_images=config["data"]["max_images"],
        device=config["device"],
        code=code_version("seg", "refine", "cam", "data"),
    threads: workflow.cores
    resources:
        gpu=GPU,
    log:
        "logs/eval_seg/eval_seg.log",
    benchmark:
        f"{R}/benchmarks/eval_seg/eval_seg.tsv"
    script:
        "../scripts/eval_seg.py"
