"""The generator: its networks (encoders, denoisers, the weight normaliser), how they are built from a
config and a dataset's facts, its checkpoint format, and the public generation API (``api``)."""
