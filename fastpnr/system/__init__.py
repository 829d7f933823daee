"""the process and its devices: ranks and collectives, dtypes, the process's torch settings, atomic files and RNG states, stop signals, folders made and removed."""
