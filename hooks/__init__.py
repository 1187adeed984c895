"""pitstop.hooks: Slurm Prolog/Epilog/HealthCheckProgram entry points and deep health checks."""
