"""pitstop.plans: training plans — find capacity, book it as Slurm reservations, carry a run."""
