# The demo world: a generated dataset in PASCAL VOC layout (data.source = world).


rule world:
    output:
        directory(f"{R}/data"),
    params:
        world=config["world"],
        seed=config["seed"],
        code=code_version("data"),
    log:
        "logs/world/world.log",
    benchmark:
        "benchmarks/world/world.tsv"
    script:
        "../scripts/world.py"
