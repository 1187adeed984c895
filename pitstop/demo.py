"""`pitstop demo`: a training run survives a dying GPU, on the local testbed."""

from pitstop.cli import not_built

demo = not_built("demo", 7, "the fault-campaign demo on the local testbed")
