# rules for the quality stage (see docs/ARCHITECTURE.md)
