"""Meta-training (plain torch, no Ray): the generator's outer loop (``trainer``), its losses, and the
gradient-based meta-learned initialisations the project compares against (``meta_init``)."""
