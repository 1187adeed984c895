"""`pitstop check …` and `pitstop hooks …`: health checks and Slurm entry points."""

from pitstop.cli import not_built

check = not_built("check", 5, "deep health checks")
hooks = not_built("hooks", 5, "Slurm Prolog/Epilog/HealthCheckProgram hooks")
