"""`pitstop status`: the cluster health table (Slurm merged with the agents' state files)."""

from pitstop.cli import not_built

status = not_built("status", 3, "cluster health merged from Slurm and every agent")
