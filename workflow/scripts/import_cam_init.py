"""Rule import_cam_init: IRNet's res50_cam.pth as the start of the CAM stage (instead of pretrain_cam)."""

from _common import run

from pole_core.cam.network import import_irnet_cam
from pole_core.cam.train import save_cam_net


def main(log):
    net = import_irnet_cam(
        snakemake.input[0], snakemake.params.n_classes, strides=snakemake.params.strides
    )
    save_cam_net(snakemake.output[0], net, {"imported_from": str(snakemake.input[0])})
    log.info("imported %s (%d classes)", snakemake.input[0], snakemake.params.n_classes)


run(snakemake, main)
