"""Direct preference optimisation (DPO, Rafailov et al. 2023) and IPO (Azar et al. 2023): the RL-free baseline."""
