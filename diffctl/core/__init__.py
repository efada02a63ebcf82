"""Pure diffusion math: torch and math only; no IO, no configs, no printing."""
