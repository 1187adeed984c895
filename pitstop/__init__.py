"""pitstop: keeps long training runs alive on Slurm clusters.

The core package holds what every component shares: the CLI that mounts their commands,
configuration, the Slurm client (the only code that runs Slurm), the cluster model and
the local testbed.
"""

__version__ = "0.1.0"
