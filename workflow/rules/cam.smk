# Stages A and C: CLIP-guided CAM network per variant, multi-scale CAM extraction, CAM score.

PRETRAIN_CAM_KEYS = (
    "backbone",
    "weights",
    "strides",
    "widths",
    "resize_long",
    "crop_size",
    "flip",
    "weight_decay",
    "momentum",
    "workers",
    "pretrain",
)


rule import_cam_init:
    """IRNet's released CAM classifier (cam.init) in this pipeline's CAM-network format."""
    conda:
        CONDA_ENV
    input:
        config["cam"]["init"] or [],
    output:
        f"{R}/cam_net/init_imported.pt",
    params:
        strides=config["cam"]["strides"],
        n_classes=len(class_names()),
        code=code_version("cam"),
    log:
        "logs/import_cam_init.log",
    script:
        "../scripts/import_cam_init.py"


rule pretrain_cam:
    conda:
        CONDA_ENV
    input:
        data=data_root(),
        aug=sbd_input(),
    output:
        f"{R}/cam_net/init.pt",
    params:
        # only what the classifier depends on: CLIMS settings (epochs, lr, ...) do not rerun it
        cam={k: config["cam"][k] for k in PRETRAIN_CAM_KEYS},
        split=config["data"]["train_split"],
        max_images=config["data"]["max_images"],
        crop_fill=config["data"]["crop_fill"],
        seed=config["seed"],
        device=config["device"],
        code=code_version("cam", "data"),
    threads: workflow.cores
    resources:
        gpu=GPU,
    log:
        "logs/pretrain_cam.log",
    benchmark:
        f"{R}/benchmarks/pretrain_cam.tsv"
    script:
        "../scripts/pretrain_cam.py"


rule train_cam:
    conda:
        CONDA_ENV
    input:
        data=data_root(),
        aug=sbd_input(),
        clip=clip_input(),
        prompts=prompts_input,
        init=cam_init_input(),
    output:
        f"{R}/cam_net/{{variant}}/model.pt",
    wildcard_constraints:
        variant=source_variants("trained"),
    params:
        cam={k: v for k, v in config["cam"].items() if k != "variants"},
        variant=lambda wc: variant_settings(config, wc.variant),
        clip=config["clip"],
        split=config["data"]["train_split"],
        max_images=config["data"]["max_images"],
        crop_fill=config["data"]["crop_fill"],
        seed=config["seed"],
        device=config["device"],
        code=code_version("cam", "clip", "data"),
    threads: workflow.cores
    resources:
        gpu=GPU,
    log:
        "logs/train_cam/{variant}.log",
    benchmark:
        f"{R}/benchmarks/train_cam/{{variant}}.tsv"
    script:
        "../scripts/train_cam.py"


rule extract_cams:
    conda:
        CONDA_ENV
    input:
        data=data_root(),
        aug=sbd_input(),
        model=f"{R}/cam_net/{{variant}}/model.pt",
    output:
        # the shards are merged into cams/{variant}.h5 and then deleted (keep: --notemp)
        temp(f"{R}/cams/{{variant}}/shard_{{scatteritem}}.h5"),
    wildcard_constraints:
        variant=source_variants("trained"),
    params:
        extract=config["extract"],
        splits=[config["data"]["train_split"], config["data"]["eval_split"]],
        max_images=config["data"]["max_images"],
        device=config["device"],
        code=code_version("cam", "data"),
    threads: 1
    resources:
        gpu=GPU,
    log:
        "logs/extract_cams/{variant}_{scatteritem}.log",
    benchmark:
        f"{R}/benchmarks/extract_cams/{{variant}}_{{scatteritem}}.tsv"
    script:
        "../scripts/extract_cams.py"


rule clip_es_cams:
    """The training-free CAM source (cam.variants.<name>.source: clip_es): CLIP-ES CAMs of the
    frozen CLIP ViT, one shard of the same scatter and store as extract_cams; no CAM network."""
    conda:
        CONDA_ENV
    input:
        data=data_root(),
        aug=sbd_input(),
        clip=clip_input(),
        prompts=prompts_input,
    output:
        temp(f"{R}/cams/{{variant}}/shard_{{scatteritem}}.h5"),
    wildcard_constraints:
        variant=source_variants("clip_es"),
    params:
        clip_es=config["clip_es"],
        clip=config["clip"],
        prompts=lambda wc: variant_settings(config, wc.variant)["prompts"],
        splits=[config["data"]["train_split"], config["data"]["eval_split"]],
        max_images=config["data"]["max_images"],
        device=config["device"],
        code=code_version("cam", "clip", "data"),
    threads: 1
    resources:
        gpu=GPU,
    log:
        "logs/clip_es_cams/{variant}_{scatteritem}.log",
    benchmark:
        f"{R}/benchmarks/clip_es_cams/{{variant}}_{{scatteritem}}.tsv"
    script:
        "../scripts/clip_es_cams.py"


rule gather_cams:
    conda:
        CONDA_ENV
    input:
        gather.cams(f"{R}/cams/{{{{variant}}}}/shard_{{scatteritem}}.h5"),
    output:
        f"{R}/cams/{{variant}}.h5",
    log:
        "logs/gather_cams/{variant}.log",
    script:
        "../scripts/gather_cams.py"


rule eval_cam:
    conda:
        CONDA_ENV
    input:
        data=data_root(),
        aug=sbd_input(),
        cams=f"{R}/cams/{{variant}}.h5",
    output:
        report(
            f"{R}/eval/cam_{{variant}}.json",
            caption="../report/eval_cam.rst",
            category="Scores",
        ),
    params:
        split=config["data"]["eval_split"],
        max_images=config["data"]["max_images"],
        thresholds=thresholds(config),
        code=code_version("cam", "data"),
    log:
        "logs/eval_cam/{variant}.log",
    script:
        "../scripts/eval_cam.py"
