"""Inner-loop optimisation trajectories, the diffusion targets (docs/design.md 2.2), and where they start."""
