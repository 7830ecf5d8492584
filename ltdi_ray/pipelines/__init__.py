"""Stage pipelines (the only Ray-aware layer besides storage): ``run_<stage>(cfg) -> summary``."""
