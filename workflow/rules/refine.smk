# Stage D: dense CRF labels, IRNet boundary network, random walk -> pseudo-masks, export.


rule crf:
    conda:
        CONDA_ENV
    input:
        data=data_root(),
        aug=sbd_input(),
        cams=f"{R}/cams/{{variant}}.h5",
        cam_eval=f"{R}/eval/cam_{{variant}}.json" if SCORED else [],
    output:
        directory(f"{R}/crf/{{variant}}/shard_{{scatteritem}}"),
    params:
        crf=config["crf"],
        split=config["data"]["train_split"],
        eval_split=config["data"]["eval_split"] if SCORED else None,
        max_images=config["data"]["max_images"],
        code=code_version("refine", "cam", "data"),
    threads: 1
    log:
        "logs/crf/{variant}_{scatteritem}.log",
    benchmark:
        f"{R}/benchmarks/crf/{{variant}}_{{scatteritem}}.tsv"
    script:
        "../scripts/crf.py"


rule eval_crf:
    conda:
        CONDA_ENV
    input:
        data=data_root(),
        aug=sbd_input(),
        shards=gather.crf(f"{R}/crf/{{{{variant}}}}/shard_{{scatteritem}}"),
    output:
        f"{R}/eval/crf_{{variant}}.json",
    params:
        split=config["data"]["eval_split"],
        max_images=config["data"]["max_images"],
        code=code_version("refine", "data"),
    log:
        "logs/eval_crf/{variant}.log",
    script:
        "../scripts/eval_crf.py"


rule train_affinity:
    conda:
        CONDA_ENV
    input:
        data=data_root(),
        aug=sbd_input(),
        backbone=affinity_backbone_input,
        shards=gather.crf(f"{R}/crf/{{{{variant}}}}/shard_{{scatteritem}}"),
    output:
        f"{R}/affinity/{{variant}}/model.pt",
    params:
        affinity=config["affinity"],
        split=config["data"]["train_split"],
        max_images=config["data"]["max_images"],
        crop_fill=config["data"]["crop_fill"],
        seed=config["seed"],
        device=config["device"],
        code=code_version("refine", "cam", "data"),
    threads: workflow.cores
    resources:
        gpu=GPU,
    log:
        "logs/train_affinity/{variant}.log",
    benchmark:
        f"{R}/benchmarks/train_affinity/{{variant}}.tsv"
    script:
        "../scripts/train_affinity.py"


rule random_walk:
    conda:
        CONDA_ENV
    input:
        data=data_root(),
        aug=sbd_input(),
        cams=f"{R}/cams/{{variant}}.h5",
        backbone=affinity_backbone_input,
        affinity=f"{R}/affinity/{{variant}}/model.pt",
    output:
        directory(f"{R}/rw/{{variant}}/shard_{{scatteritem}}"),
    params:
        rw=config["random_walk"],
        affinity_backbone=config["affinity"]["backbone"],
        splits=[config["data"]["train_split"], config["data"]["eval_split"]],
        max_images=config["data"]["max_images"],
        device=config["device"],
        code=code_version("refine", "cam", "data"),
    threads: 1
    resources:
        gpu=GPU,
    log:
        "logs/random_walk/{variant}_{scatteritem}.log",
    benchmark:
        f"{R}/benchmarks/random_walk/{{variant}}_{{scatteritem}}.tsv"
    script:
        "../scripts/random_walk.py"


rule pseudo_masks:
    conda:
        CONDA_ENV
    input:
        shards=gather.rw(f"{R}/rw/{{{{variant}}}}/shard_{{scatteritem}}"),
    output:
        directory(f"{R}/pseudo_masks/{{variant}}"),
    log:
        "logs/pseudo_masks/{variant}.log",
    script:
        "../scripts/pseudo_masks.py"


rule eval_pseudo:
    conda:
        CONDA_ENV
    input:
        data=data_root(),
        aug=sbd_input(),
        masks=f"{R}/pseudo_masks/{{variant}}",
    output:
        report(
            f"{R}/eval/pseudo_{{variant}}.json",
            caption="../report/eval_pseudo.rst",
            category="Scores",
        ),
    params:
        split=config["data"]["eval_split"],
        max_images=config["data"]["max_images"],
        code=code_version("data"),
    log:
        "logs/eval_pseudo/{variant}.log",
    script:
        "../scripts/eval_pseudo.py"


rule export:
    conda:
        CONDA_ENV
    input:
        data=data_root(),
        aug=sbd_input(),
        masks=f"{R}/pseudo_masks/{SEG_VARIANT}",
    output:
        voc=directory(f"{R}/export/voc"),
        mmseg=directory(f"{R}/export/mmseg"),
        manifest=f"{R}/export/manifest.json",
    params:
        train_split=config["data"]["train_split"],
        val_split=config["data"]["val_split"],
        max_images=config["data"]["max_images"],
        code=code_version("refine", "data"),
    log:
        "logs/export/export.log",
    script:
        "../scripts/export.py"
