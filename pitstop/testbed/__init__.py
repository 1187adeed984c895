"""pitstop.testbed: a real local Slurm cluster (munged, slurmctld, N slurmd) on one machine."""
