# The demo world: a generated dataset in PASCAL VOC layout (data.source = world).


rule world:
    conda:
        CONDA_ENV
    output:
        directory(f"{R}/data"),
    params:
        world=config["world"],
        seed=config["seed"],
        code=code_version("demo"),
    log:
        "logs/world/world.log",
    benchmark:
        f"{R}/benchmarks/world/world.tsv"
    script:
        "../scripts/world.py"


# SBD -> train_aug (data.sbd_root set): the SegmentationClassAug PNGs SBD does not ship,
# train_aug.txt and cls_labels.npy, read by every stage as the dataset's aug_root.
SBD_ROOT = config["data"].get("sbd_root")
if SBD_ROOT is not None:
    if config["data"]["source"] != "voc":
        raise WorkflowError(
            f"config: data.sbd_root needs data.source voc (not {config['data']['source']}); "
            "set data.sbd_root null"
        )
    if not Path(SBD_ROOT).is_dir():
        raise WorkflowError(f"{SBD_ROOT}: SBD root not found (config data.sbd_root)")


rule sbd_train_aug:
    conda:
        CONDA_ENV
    output:
        directory(f"{R}/sbd"),
    params:
        voc_root=config["data"]["root"],
        sbd_root=SBD_ROOT,
        code=code_version("data"),
    log:
        "logs/sbd/sbd_train_aug.log",
    benchmark:
        f"{R}/benchmarks/sbd/sbd_train_aug.tsv"
    script:
        "../scripts/sbd_train_aug.py"
