"""The generated demo world: a VOC-layout dataset with a caption corpus for the mini-CLIP.

Not part of the method: it exists so that the pipeline runs end to end where no dataset
or CLIP weights can be downloaded (docs/DEMO_WORLD.md). The method's packages never
import it; the pipeline reads its output through the VOC reader like any VOCdevkit.
"""
