"""studies: grids of runs, their reports, comparisons, paired statistics, Slurm."""
