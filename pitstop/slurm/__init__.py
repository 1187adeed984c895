"""pitstop.slurm: the only code in pitstop that runs Slurm commands."""

from pitstop.slurm.client import Slurm, SlurmError, SlurmVersion
from pitstop.slurm.hostlist import HostlistError, compress, expand

__all__ = ["Slurm", "SlurmError", "SlurmVersion", "HostlistError", "compress", "expand"]
